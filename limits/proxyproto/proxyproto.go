// Package proxyproto reads PROXY protocol headers (HAProxy's
// proxy-protocol.txt, versions 1 and 2) strictly and within bounds: the
// header a trusted L4 load balancer puts in front of a TCP stream to carry
// the client's address. It parses; the policy (who must and who must not
// send one, the deadline) is limits.Listener's.
//
// It is a parser of its own rather than github.com/pires/go-proxyproto:
// that library's Conn reads the header through a 4 KiB bufio.Reader per
// connection, which reads past the header (bytes held there are invisible
// to limits/park, which waits for a socket's readiness), and it reads the
// header lazily inside Read/RemoteAddr behind its own policy, where
// edgeshim must read it at a chosen point (before per-IP admission and the
// TLS deadline), under its own timeout, and count each refusal by reason;
// its errors do not map one to one onto those reasons. Version 2 is read exactly (never a
// byte past the header); version 1, whose end is a CRLF, may be read past:
// those bytes are returned to be replayed.
package proxyproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strconv"
)

// Errors, matched with errors.Is. A read error of the connection (a
// timeout) is returned wrapped as it is.
var (
	// ErrNoHeader: the stream does not start with a PROXY header.
	ErrNoHeader = errors.New("proxyproto: no PROXY protocol header")
	// ErrMalformed: the header breaks the specification.
	ErrMalformed = errors.New("proxyproto: malformed header")
	// ErrTruncated: the stream ended inside the header.
	ErrTruncated = errors.New("proxyproto: truncated header")
	// ErrOversized: a v1 line longer than 107 bytes, or a v2 header
	// announcing more than MaxV2Payload bytes.
	ErrOversized = errors.New("proxyproto: oversized header")
)

const (
	// MaxV1 is the longest v1 header, CRLF included (the specification's
	// bound).
	MaxV1 = 107
	// MaxV2Payload bounds the v2 address block and TLVs: the largest
	// address block (AF_UNIX, 216 bytes) and room for the TLVs balancers
	// send (AWS VPC endpoint id, GCP PSC id, SSL info).
	MaxV2Payload = 512
)

var (
	sigV1 = []byte("PROXY ")
	sigV2 = []byte("\r\n\r\n\x00\r\nQUIT\n")
)

// Header is a parsed PROXY header.
type Header struct {
	// Version is 1 or 2.
	Version int
	// Local is true for a v2 LOCAL command (the balancer's own health
	// check) and for v1 UNKNOWN and v2 UNSPEC/UNIX addresses: the real
	// peer is the client.
	Local bool
	// Source and Dest are the carried addresses (zero when Local).
	Source, Dest netip.AddrPort
}

// Read reads one header from r, which should have a read deadline. It
// returns the header and the bytes read past it (v1 only), or an error;
// with ErrNoHeader, rest holds the bytes read (up to 16), to be replayed.
func Read(r io.Reader) (h Header, rest []byte, err error) {
	buf := make([]byte, MaxV1)
	n := 0
	// At most 16 bytes until the kind is known: a v2 header's fixed part
	// is 16 bytes, so nothing past it is read.
	for {
		kind := sniff(buf[:n])
		if kind == kindNone {
			return Header{}, buf[:n], ErrNoHeader
		}
		if kind == kindV1 {
			return readV1(r, buf, n)
		}
		if kind == kindV2 && n == 16 {
			return readV2(r, buf[:16])
		}
		m, err := r.Read(buf[n:16])
		n += m
		if err != nil && m == 0 {
			if n == 0 && errors.Is(err, io.EOF) {
				return Header{}, nil, io.EOF
			}
			return Header{}, nil, readErr(err)
		}
	}
}

func readErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return ErrTruncated
	}
	return fmt.Errorf("proxyproto: %w", err)
}

type kind int

const (
	kindMore kind = iota // a prefix of a signature so far
	kindNone
	kindV1
	kindV2
)

// sniff reports what b starts with.
func sniff(b []byte) kind {
	if len(b) >= len(sigV1) && bytes.Equal(b[:len(sigV1)], sigV1) {
		return kindV1
	}
	if len(b) >= len(sigV2) && bytes.Equal(b[:len(sigV2)], sigV2) {
		return kindV2
	}
	if (len(b) < len(sigV1) && bytes.HasPrefix(sigV1, b)) || (len(b) < len(sigV2) && bytes.HasPrefix(sigV2, b)) {
		return kindMore
	}
	return kindNone
}

// HasPrefix reports whether b (the first bytes of a stream) starts with,
// or so far is a prefix of, a PROXY signature; more is true when b is too
// short to tell.
func HasPrefix(b []byte) (header, more bool) {
	switch sniff(b) {
	case kindV1, kindV2:
		return true, false
	case kindMore:
		return false, true
	}
	return false, false
}

func readV1(r io.Reader, buf []byte, n int) (Header, []byte, error) {
	for {
		if i := bytes.IndexByte(buf[:n], '\r'); i >= 0 && i+1 < n {
			if buf[i+1] != '\n' {
				return Header{}, nil, fmt.Errorf("%w: v1: CR without LF", ErrMalformed)
			}
			h, err := parseV1(buf[len(sigV1):i])
			return h, buf[i+2 : n], err
		}
		if bytes.IndexByte(buf[:n], '\n') >= 0 {
			return Header{}, nil, fmt.Errorf("%w: v1: LF without CR", ErrMalformed)
		}
		if n == len(buf) {
			return Header{}, nil, fmt.Errorf("%w: v1: no CRLF within %d bytes", ErrOversized, MaxV1)
		}
		m, err := r.Read(buf[n:])
		n += m
		if err != nil && m == 0 {
			return Header{}, nil, readErr(err)
		}
	}
}

// parseV1 parses what follows "PROXY " up to the CRLF.
func parseV1(line []byte) (Header, error) {
	f := bytes.Split(line, []byte(" "))
	h := Header{Version: 1}
	switch string(f[0]) {
	case "UNKNOWN":
		// The rest is to be ignored (the specification).
		h.Local = true
		return h, nil
	case "TCP4", "TCP6":
	default:
		return h, fmt.Errorf("%w: v1: protocol %q", ErrMalformed, f[0])
	}
	if len(f) != 5 {
		return h, fmt.Errorf("%w: v1: %d fields, want 5", ErrMalformed, len(f))
	}
	v6 := string(f[0]) == "TCP6"
	src, err1 := parseV1Addr(f[1], v6)
	dst, err2 := parseV1Addr(f[2], v6)
	sp, err3 := parseV1Port(f[3])
	dp, err4 := parseV1Port(f[4])
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return h, fmt.Errorf("%w: v1: %w", ErrMalformed, err)
	}
	h.Source, h.Dest = netip.AddrPortFrom(src, sp), netip.AddrPortFrom(dst, dp)
	return h, nil
}

func parseV1Addr(b []byte, v6 bool) (netip.Addr, error) {
	a, err := netip.ParseAddr(string(b))
	if err != nil {
		return a, err
	}
	if a.Zone() != "" || a.Is4() == v6 {
		return netip.Addr{}, fmt.Errorf("address %q does not fit the protocol", b)
	}
	return a.Unmap(), nil
}

func parseV1Port(b []byte) (uint16, error) {
	if len(b) == 0 || len(b) > 5 || (len(b) > 1 && b[0] == '0') {
		return 0, fmt.Errorf("bad port %q", b)
	}
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, fmt.Errorf("bad port %q", b)
		}
	}
	p, err := strconv.ParseUint(string(b), 10, 16)
	if err != nil {
		return 0, fmt.Errorf("bad port %q", b)
	}
	return uint16(p), nil
}

// v2 families (address family << 4 | transport); only streams are
// carried to a TCP listener.
const (
	famUnspec = 0x00
	famTCP4   = 0x11
	famTCP6   = 0x21
	famUnix   = 0x31
)

func readV2(r io.Reader, fixed []byte) (Header, []byte, error) {
	h := Header{Version: 2}
	verCmd, fam := fixed[12], fixed[13]
	size := int(binary.BigEndian.Uint16(fixed[14:16]))
	if verCmd>>4 != 2 {
		return h, nil, fmt.Errorf("%w: v2: version %d", ErrMalformed, verCmd>>4)
	}
	if size > MaxV2Payload {
		return h, nil, fmt.Errorf("%w: v2: %d bytes announced, at most %d", ErrOversized, size, MaxV2Payload)
	}
	payload := make([]byte, size)
	if _, err := io.ReadFull(r, payload); err != nil {
		return h, nil, readErr(err)
	}
	switch verCmd & 0xF {
	case 0: // LOCAL: the address block is to be ignored.
		h.Local = true
		return h, nil, nil
	case 1: // PROXY
	default:
		return h, nil, fmt.Errorf("%w: v2: command %d", ErrMalformed, verCmd&0xF)
	}
	var addrLen int
	switch fam {
	case famUnspec:
		h.Local = true
	case famTCP4:
		addrLen = 12
	case famTCP6:
		addrLen = 36
	case famUnix:
		addrLen = 216
		h.Local = true
	default:
		return h, nil, fmt.Errorf("%w: v2: family/transport %#02x", ErrMalformed, fam)
	}
	if size < addrLen {
		return h, nil, fmt.Errorf("%w: v2: %d bytes, the address block needs %d", ErrMalformed, size, addrLen)
	}
	if err := checkTLVs(payload[addrLen:]); err != nil {
		return h, nil, err
	}
	switch fam {
	case famTCP4:
		h.Source = netip.AddrPortFrom(netip.AddrFrom4([4]byte(payload[0:4])), binary.BigEndian.Uint16(payload[8:10]))
		h.Dest = netip.AddrPortFrom(netip.AddrFrom4([4]byte(payload[4:8])), binary.BigEndian.Uint16(payload[10:12]))
	case famTCP6:
		h.Source = netip.AddrPortFrom(netip.AddrFrom16([16]byte(payload[0:16])).Unmap(), binary.BigEndian.Uint16(payload[32:34]))
		h.Dest = netip.AddrPortFrom(netip.AddrFrom16([16]byte(payload[16:32])).Unmap(), binary.BigEndian.Uint16(payload[34:36]))
	}
	return h, nil, nil
}

// checkTLVs checks that the TLVs after the address block tile it exactly.
// Their values are not used.
func checkTLVs(b []byte) error {
	for len(b) > 0 {
		if len(b) < 3 {
			return fmt.Errorf("%w: v2: %d trailing bytes, not a TLV", ErrMalformed, len(b))
		}
		n := int(binary.BigEndian.Uint16(b[1:3]))
		if 3+n > len(b) {
			return fmt.Errorf("%w: v2: TLV %#02x of %d bytes overruns the header", ErrMalformed, b[0], n)
		}
		b = b[3+n:]
	}
	return nil
}

// AppendV1 appends a v1 header for src → dst (both IPv4 or both IPv6).
// For tests and tools.
func AppendV1(b []byte, src, dst netip.AddrPort) []byte {
	proto := "TCP4"
	if src.Addr().Is6() {
		proto = "TCP6"
	}
	return fmt.Appendf(b, "PROXY %s %s %s %d %d\r\n", proto, src.Addr(), dst.Addr(), src.Port(), dst.Port())
}

// AppendV2 appends a v2 PROXY (or, with local, LOCAL) header for src →
// dst followed by tlvs (already encoded). For tests and tools.
func AppendV2(b []byte, local bool, src, dst netip.AddrPort, tlvs []byte) []byte {
	b = append(b, sigV2...)
	if local {
		b = append(b, 0x20, famUnspec)
		return binary.BigEndian.AppendUint16(b, 0)
	}
	var addrs []byte
	fam := byte(famTCP4)
	if src.Addr().Is4() {
		s, d := src.Addr().As4(), dst.Addr().As4()
		addrs = append(append(addrs, s[:]...), d[:]...)
	} else {
		fam = famTCP6
		s, d := src.Addr().As16(), dst.Addr().As16()
		addrs = append(append(addrs, s[:]...), d[:]...)
	}
	addrs = binary.BigEndian.AppendUint16(addrs, src.Port())
	addrs = binary.BigEndian.AppendUint16(addrs, dst.Port())
	b = append(b, 0x21, fam)
	b = binary.BigEndian.AppendUint16(b, uint16(len(addrs)+len(tlvs)))
	return append(append(b, addrs...), tlvs...)
}
