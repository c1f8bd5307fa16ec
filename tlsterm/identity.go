package tlsterm

import (
	"crypto/tls"
)

// Identity is what a verified client certificate says about its holder.
type Identity struct {
	// CommonName is the leaf's subject CN.
	CommonName string
	// DNSNames and URIs are the leaf's SANs.
	DNSNames []string
	URIs     []string
}

// PeerIdentity returns the identity of a verified client certificate, and
// false when the peer presented none (or it was not verified).
func PeerIdentity(cs *tls.ConnectionState) (Identity, bool) {
	if cs == nil || len(cs.VerifiedChains) == 0 || len(cs.VerifiedChains[0]) == 0 {
		return Identity{}, false
	}
	leaf := cs.VerifiedChains[0][0]
	id := Identity{CommonName: leaf.Subject.CommonName, DNSNames: leaf.DNSNames}
	for _, u := range leaf.URIs {
		id.URIs = append(id.URIs, u.String())
	}
	return id, true
}
