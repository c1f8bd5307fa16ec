// Package h1 is the HTTP/1.1 wire syntax that edgeshim's proxy reads
// without net/http: header lines and their fields, the Connection
// header's tokens, chunk-size lines and Content-Length values, each
// accepted only as net/http would accept it (a strict subset: what is not
// accepted is left to net/http), and Scanner, which follows a
// connection's request framing as net/http reads it to find a request
// with both Content-Length and Transfer-Encoding.
//
// It is a leaf: the upstream client (proxy/upstream) parses response
// heads with it, the HTTP/1.1 fast path (proxy/fast) request heads, and
// package proxy's framing guard scans with Scanner.
package h1

import (
	"bytes"
	"strings"
)

// Field is one header line; Kind tells what the proxy does with it.
// Name and Value point into the buffer the head was parsed from.
type Field struct {
	Name, Value []byte
	Kind        Kind
}

// Kind is what the proxy does with a header field.
type Kind uint8

const (
	Pass    Kind = iota // passed on to the backend
	Hop                 // hop-by-hop: dropped
	XFF                 // X-Forwarded-For
	XFH                 // X-Forwarded-Host
	XFP                 // X-Forwarded-Proto
	Fwd                 // Forwarded
	Trailer             // a response's Trailer: kept when the body is chunked
)

// Verdict is a head parser's: a whole head, not yet, or not one the
// caller takes.
type Verdict uint8

const (
	OK       Verdict = iota // a whole head, accepted
	NeedMore                // no complete head yet, nothing wrong so far
	NotFast                 // not taken: net/http serves it (request), malformed (response)
)

// IsHopHeader: the hop-by-hop headers (ReverseProxy's list) that need no
// other handling.
func IsHopHeader(name []byte) bool {
	return EqualFold(name, "keep-alive") || EqualFold(name, "proxy-connection") ||
		EqualFold(name, "proxy-authenticate") || EqualFold(name, "proxy-authorization")
}

// SplitHead splits a head at the start of b into its first line and its
// header fields (at most max, appended to fields); n is its length.
func SplitHead(b []byte, fields []Field, max int) (first []byte, _ []Field, n int, v Verdict) {
	first, rest, v := nextLine(b)
	if v != OK {
		return nil, fields, 0, v
	}
	for {
		var line []byte
		line, rest, v = nextLine(rest)
		if v != OK {
			return nil, fields, 0, v
		}
		if len(line) == 0 {
			return first, fields, len(b) - len(rest), OK
		}
		f, ok := SplitField(line)
		if !ok || len(fields) >= max {
			return nil, fields, 0, NotFast
		}
		fields = append(fields, f)
	}
}

// MarkConnNames makes the fields named in Connection hop-by-hop.
func MarkConnNames(fields []Field, names [][]byte) {
	for i := range fields {
		for _, n := range names {
			if bytes.EqualFold(fields[i].Name, n) {
				fields[i].Kind = Hop
			}
		}
	}
}

// nextLine splits off one CRLF-terminated line. A bare LF or CR is not
// fast (net/http accepts a bare LF; the fast path does not bother).
func nextLine(b []byte) (line, rest []byte, v Verdict) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		if bytes.IndexByte(b, '\r') >= 0 && b[len(b)-1] != '\r' {
			return nil, nil, NotFast
		}
		return nil, nil, NeedMore
	}
	if i == 0 || b[i-1] != '\r' || bytes.IndexByte(b[:i-1], '\r') >= 0 {
		return nil, nil, NotFast
	}
	return b[:i-1], b[i+1:], OK
}

// IsTchar: c may be in a token (RFC 9110 tchar).
func IsTchar(c byte) bool { return IsAlnum(c) || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0 }

// IsAlnum: c is an ASCII letter or digit.
func IsAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// SplitField splits "name: value" with a token name, no space before the
// colon, and a value of visible bytes, spaces, tabs and obs-text.
func SplitField(line []byte) (Field, bool) {
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		return Field{}, false
	}
	name := line[:colon]
	for _, c := range name {
		if !IsTchar(c) {
			return Field{}, false
		}
	}
	val := line[colon+1:]
	for _, c := range val {
		if c < ' ' && c != '\t' || c == 0x7f {
			return Field{}, false
		}
	}
	return Field{Name: name, Value: bytes.Trim(val, " \t")}, true
}

// ConnTokens are a Connection header's tokens.
type ConnTokens struct {
	Close, KeepAlive, Upgrade bool
	Names                     [][]byte // other tokens: header names, hop-by-hop
}

// Add adds the tokens of one Connection header value.
func (c *ConnTokens) Add(v []byte) {
	for len(v) > 0 {
		var t []byte
		t, v = nextToken(v)
		switch {
		case len(t) == 0:
		case EqualFold(t, "close"):
			c.Close = true
		case EqualFold(t, "keep-alive"):
			c.KeepAlive = true
		case EqualFold(t, "upgrade"):
			c.Upgrade = true
		default:
			c.Names = append(c.Names, t)
		}
	}
}

// nextToken splits the first element off a comma-separated list.
func nextToken(v []byte) (t, rest []byte) {
	if i := bytes.IndexByte(v, ','); i >= 0 {
		return bytes.Trim(v[:i], " \t"), v[i+1:]
	}
	return bytes.Trim(v, " \t"), nil
}

// HasToken reports whether a comma-separated list holds token
// (case-insensitive; token in lower case).
func HasToken(v []byte, token string) bool {
	for len(v) > 0 {
		var t []byte
		if t, v = nextToken(v); EqualFold(t, token) {
			return true
		}
	}
	return false
}

// HostForMatch is the host a router matches: the Host header without
// its port (as net.SplitHostPort splits it), lower case, no trailing dot,
// written into dst.
func HostForMatch(dst, host []byte) []byte {
	h := host
	if last := bytes.LastIndexByte(host, ':'); last >= 0 {
		if host[0] == '[' {
			if end := bytes.IndexByte(host, ']'); end+1 == last && bytes.IndexByte(host[end+1:], '[') < 0 &&
				bytes.IndexByte(host[end+1:], ']') < 0 && bytes.IndexByte(host[1:end], '[') < 0 {
				h = host[1:end]
			}
		} else if bytes.IndexByte(host[:last], ':') < 0 && !bytes.ContainsAny(host[:last], "[]") &&
			!bytes.ContainsAny(host[last:], "[]") {
			h = host[:last]
		}
	}
	dst = dst[:0]
	for _, c := range h {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	return bytes.TrimSuffix(dst, []byte{'.'})
}
