package config

import "fmt"

// TLS configures TLS termination.
type TLS struct {
	// Certs are certificate/key PEM file pairs, chosen by SNI. Default: none;
	// with neither certs nor acme, a self-signed development certificate is
	// generated once and kept in data_dir.
	Certs []CertFile `yaml:"certs"`
	// ACME obtains and renews certificates automatically. Default: off.
	ACME *ACME `yaml:"acme"`
	// SelfSigned configures the development certificate used when no
	// certificate is configured.
	SelfSigned SelfSigned `yaml:"self_signed"`
	// MinVersion is "1.2" or "1.3". Default: "1.2" (TLS 1.2 with ECDHE
	// suites only).
	MinVersion string `yaml:"min_version"`
	// SessionTickets configures resumption tickets.
	SessionTickets SessionTickets `yaml:"session_tickets"`
	// ClientAuth requests client certificates as device identity. Default:
	// off.
	ClientAuth *ClientAuth `yaml:"client_auth"`
}

// CertFile is one certificate and its key, both PEM files.
type CertFile struct {
	// Cert is the PEM certificate chain file. Required.
	Cert string `yaml:"cert"`
	// Key is the PEM private key file. Required.
	Key string `yaml:"key"`
}

// SelfSigned configures the development certificate.
type SelfSigned struct {
	// Hosts are the DNS names and IPs in the certificate. Default:
	// ["localhost", "127.0.0.1", "::1"].
	Hosts []string `yaml:"hosts"`
}

// SessionTickets configures TLS session tickets (resumption on TLS 1.2 and
// 1.3).
type SessionTickets struct {
	// Disabled turns tickets off. Default: false.
	Disabled bool `yaml:"disabled"`
	// Rotate is how often a new ticket key becomes the issuing key; at
	// least 6h for generated keys. Default: 12h.
	Rotate Duration `yaml:"rotate"`
	// Keep is the least number of generated keys accepted for resumption,
	// the issuing one included. edgeshim keeps more when needed, so that
	// a ticket resumes for the whole 7 days TLS 1.3 tells clients it is
	// valid (Go's fixed lifetime): 1 + ceil(7d / rotate), 15 with 12h.
	// Generated keys are kept in data_dir (session-ticket-keys, mode
	// 0600), so a restart resumes tickets. Default: 3.
	Keep int `yaml:"keep"`
	// KeyFile is a file of ticket keys shared by replicas: one key per line,
	// 64 hex characters (32 bytes), newest (issuing) first. When set, keys
	// come only from it and it is re-read on SIGHUP; rotation is the job of
	// whoever writes it. Default: "" (keys generated in memory and rotated).
	KeyFile string `yaml:"key_file"`
}

// ClientAuth configures client certificate verification.
type ClientAuth struct {
	// CA is a PEM file of the CAs that issue device certificates; re-read
	// on SIGHUP. Required.
	CA string `yaml:"ca"`
	// Mode is "require" or "verify_if_given". Default: "verify_if_given".
	Mode string `yaml:"mode"`
	// CRL is a file of certificate revocation lists (PEM, one or more, or
	// a single DER), each signed by a CA in ca. A revoked device
	// certificate fails the handshake (bad_certificate) in either mode,
	// resumed sessions included. ca and crl are re-read on SIGHUP.
	// Default: "" (no revocation).
	CRL string `yaml:"crl"`
}

// ACME configures automatic certificates through certmagic.
type ACME struct {
	// Email is the ACME account contact. Default: "".
	Email string `yaml:"email"`
	// Domains are the names to obtain certificates for at start. Default:
	// none.
	Domains []string `yaml:"domains"`
	// CA is the ACME directory URL. Default: Let's Encrypt production.
	CA string `yaml:"ca"`
	// Staging uses Let's Encrypt's staging directory when ca is empty.
	// Default: false.
	Staging bool `yaml:"staging"`
	// CARoot is a PEM file of roots to trust for the ACME server (private or
	// test CA). Default: "" (system roots).
	CARoot string `yaml:"ca_root"`
	// Storage is certmagic's file storage directory; replicas sharing it
	// act as one cluster. Default: "<data_dir>/acme".
	Storage string `yaml:"storage"`
	// Challenges are the enabled challenge types: "http-01" (on
	// listen.http) and "tls-alpn-01" (on listen.https). Default: both.
	Challenges []string `yaml:"challenges"`
	// RenewBefore renews a certificate when less than this remains.
	// Default: 0 (certmagic's default, a third of the lifetime).
	RenewBefore Duration `yaml:"renew_before"`
	// OnDemand obtains certificates at the first handshake for allowed
	// names. Default: off.
	OnDemand *OnDemand `yaml:"on_demand"`
	// AltHTTPPort and AltTLSALPNPort override the local ports on which
	// challenges are answered. certmagic binds its own challenge listener
	// when such a port is free, and leaves the challenge to edgeshim when
	// it is in use. Default: 0 (the ports of listen.http and
	// listen.https, so edgeshim's own listeners answer).
	AltHTTPPort    int `yaml:"alt_http_port"`
	AltTLSALPNPort int `yaml:"alt_tls_alpn_port"`
}

// OnDemand configures on-demand certificate issuance.
type OnDemand struct {
	// Allow are name patterns ("device-*.example.com", "*.example.com",
	// exact names) for which a certificate may be obtained. Default: none.
	Allow []string `yaml:"allow"`
	// Ask is a URL asked "GET ask?domain=NAME"; a 2xx allows. Default: "".
	Ask string `yaml:"ask"`
	// Rate is how many on-demand orders may start per minute. Default: 10.
	Rate float64 `yaml:"rate"`
	// Burst is the on-demand order burst. Default: 20.
	Burst int `yaml:"burst"`
}

func (t TLS) withDefaults() TLS {
	out := t
	if out.MinVersion == "" {
		out.MinVersion = "1.2"
	}
	if len(out.SelfSigned.Hosts) == 0 {
		out.SelfSigned.Hosts = []string{"localhost", "127.0.0.1", "::1"}
	}
	if out.SessionTickets.Rotate == 0 {
		out.SessionTickets.Rotate = Duration(12 * 3600e9)
	}
	if out.SessionTickets.Keep == 0 {
		out.SessionTickets.Keep = 3
	}
	if t.ClientAuth != nil {
		ca := *t.ClientAuth
		if ca.Mode == "" {
			ca.Mode = "verify_if_given"
		}
		out.ClientAuth = &ca
	}
	if t.ACME != nil {
		a := *t.ACME
		if len(a.Challenges) == 0 {
			a.Challenges = []string{"http-01", "tls-alpn-01"}
		}
		if a.OnDemand != nil {
			od := *a.OnDemand
			if od.Rate == 0 {
				od.Rate = 10
			}
			if od.Burst == 0 {
				od.Burst = 20
			}
			a.OnDemand = &od
		}
		out.ACME = &a
	}
	return out
}

func (t TLS) validate(e *errs, c *Config) {
	switch t.MinVersion {
	case "1.2", "1.3":
	default:
		e.add("tls.min_version", "must be \"1.2\" or \"1.3\" (got %q)", t.MinVersion)
	}
	for i, cf := range t.Certs {
		p := fmt.Sprintf("tls.certs[%d]", i)
		if cf.Cert == "" {
			e.add(p+".cert", "is required")
		}
		if cf.Key == "" {
			e.add(p+".key", "is required")
		}
	}
	st := t.SessionTickets
	if st.Keep < 1 {
		e.add("tls.session_tickets.keep", "must be at least 1")
	} else if st.Keep > 32 {
		e.add("tls.session_tickets.keep", "must be at most 32")
	}
	if st.Rotate.D() < 60e9 {
		e.add("tls.session_tickets.rotate", "must be at least 1m (got %s)", st.Rotate)
	} else if st.KeyFile == "" && !st.Disabled && st.Rotate.D() < 6*3600e9 {
		// Generated keys cover the 7-day ticket lifetime with at most
		// 32 keys.
		e.add("tls.session_tickets.rotate", "must be at least 6h with generated keys, which are kept for the 7-day TLS 1.3 ticket lifetime (got %s)", st.Rotate)
	}
	if ca := t.ClientAuth; ca != nil {
		if ca.CA == "" {
			e.add("tls.client_auth.ca", "is required")
		}
		switch ca.Mode {
		case "require", "verify_if_given":
		default:
			e.add("tls.client_auth.mode", "must be require or verify_if_given (got %q)", ca.Mode)
		}
	}
	if a := t.ACME; a != nil {
		if len(a.Domains) == 0 && a.OnDemand == nil {
			e.add("tls.acme.domains", "must list at least one domain (or configure on_demand)")
		}
		for i, d := range a.Domains {
			if !validHostname(d) {
				e.add(fmt.Sprintf("tls.acme.domains[%d]", i), "is not a valid domain name (got %q)", d)
			}
		}
		for i, ch := range a.Challenges {
			switch ch {
			case "http-01":
				if c.Listen.HTTP == "" {
					e.add(fmt.Sprintf("tls.acme.challenges[%d]", i), "http-01 needs listen.http")
				}
			case "tls-alpn-01":
			default:
				e.add(fmt.Sprintf("tls.acme.challenges[%d]", i), "must be http-01 or tls-alpn-01 (got %q)", ch)
			}
		}
		if a.OnDemand != nil && len(a.OnDemand.Allow) == 0 && a.OnDemand.Ask == "" {
			e.add("tls.acme.on_demand", "needs allow or ask: on-demand TLS is never open to any name")
		}
	}
}
