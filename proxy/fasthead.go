package proxy

import (
	"bytes"
	"strings"
)

// fastHead is one HTTP/1 request head as the fast path reads it: a strict
// subset of what net/http accepts. Its slices point into the connection's
// read buffer and are valid until the head is discarded from it.
//
// parseHead accepts a head only when net/http would accept it too and
// would see the same request, and only when the fast path can serve it as
// the slow path would: everything else (obs-fold, bare LF, a
// Transfer-Encoding, Expect, Upgrade, duplicate Content-Length or Host,
// an absolute or encoded target, odd bytes, ...) is "not fast", and the
// connection falls back to net/http, whose verdict (400, 431, 501, or
// serving it) is then exactly today's.
type fastHead struct {
	method []byte
	target []byte // origin-form: path[?query]
	path   []byte // the path of target, no '%' in it: raw == decoded
	http10 bool
	host   []byte
	// contentLength is the body length; 0 when there is none.
	contentLength int64
	hasCL         bool
	conn          connTokens
	teTrailers    bool // TE: trailers (passed on, as ReverseProxy does)
	fields        []headField
}

// headField is one header line; kind tells what the proxy does with it.
type headField struct {
	name, value []byte
	kind        fieldKind
}

type fieldKind uint8

const (
	fieldPass    fieldKind = iota // passed on to the backend
	fieldHop                      // hop-by-hop: dropped
	fieldXFF                      // X-Forwarded-For
	fieldXFH                      // X-Forwarded-Host
	fieldXFP                      // X-Forwarded-Proto
	fieldFwd                      // Forwarded
	fieldTrailer                  // a response's Trailer: kept when the body is chunked
)

type headVerdict uint8

const (
	headOK       headVerdict = iota
	headNeedMore             // no complete head yet, nothing wrong so far
	headNotFast              // hand the connection to net/http
)

// maxFastFields bounds the header lines of a fast request.
const maxFastFields = 100

// parseHead parses the request head at the start of b. It returns the
// head's length in bytes when the verdict is headOK. maxFields is the
// header count limit (more lines: not fast, net/http answers 431).
func parseHead(b []byte, h *fastHead, maxFields int) (int, headVerdict) {
	*h = fastHead{fields: h.fields[:0], conn: connTokens{names: h.conn.names[:0]}}
	line, fields, n, v := splitHead(b, h.fields, min(maxFields, maxFastFields))
	h.fields = fields
	if v != headOK {
		return 0, v
	}
	if !h.requestLine(line) {
		return 0, headNotFast
	}
	nHost, nCL := 0, 0
	for i := range h.fields {
		f := &h.fields[i]
		switch {
		case equalFoldASCII(f.name, "host"):
			nHost++
			if nHost > 1 || !validFastHost(f.value) {
				return 0, headNotFast
			}
			h.host = f.value
			f.kind = fieldHop // written first, by the proxy
		case equalFoldASCII(f.name, "content-length"):
			nCL++
			n, ok := parseContentLength(f.value)
			if nCL > 1 || !ok {
				return 0, headNotFast
			}
			h.contentLength, h.hasCL = int64(n), true
			f.kind = fieldHop // rewritten by the proxy
		case equalFoldASCII(f.name, "transfer-encoding"), equalFoldASCII(f.name, "expect"),
			equalFoldASCII(f.name, "upgrade"):
			return 0, headNotFast
		case equalFoldASCII(f.name, "connection"):
			if h.conn.add(f.value); h.conn.upgrade || len(h.conn.names) > 16 {
				return 0, headNotFast
			}
			f.kind = fieldHop
		case equalFoldASCII(f.name, "te"):
			h.teTrailers = h.teTrailers || hasToken(f.value, "trailers")
			f.kind = fieldHop
		case isHopHeader(f.name), equalFoldASCII(f.name, "trailer"):
			f.kind = fieldHop
		case equalFoldASCII(f.name, "x-forwarded-for"):
			f.kind = fieldXFF
		case equalFoldASCII(f.name, "x-forwarded-host"):
			f.kind = fieldXFH
		case equalFoldASCII(f.name, "x-forwarded-proto"):
			f.kind = fieldXFP
		case equalFoldASCII(f.name, "forwarded"):
			f.kind = fieldFwd
		}
	}
	if nHost == 0 {
		return 0, headNotFast // HTTP/1.1 requires it; HTTP/1.0 without one is rare
	}
	markConnNames(h.fields, h.conn.names)
	return n, headOK
}

// isHopHeader: the hop-by-hop headers (ReverseProxy's list) that need no
// other handling.
func isHopHeader(name []byte) bool {
	return equalFoldASCII(name, "keep-alive") || equalFoldASCII(name, "proxy-connection") ||
		equalFoldASCII(name, "proxy-authenticate") || equalFoldASCII(name, "proxy-authorization")
}

// splitHead splits a head at the start of b into its first line and its
// header fields (at most max, appended to fields); n is its length.
func splitHead(b []byte, fields []headField, max int) (first []byte, _ []headField, n int, v headVerdict) {
	first, rest, v := nextLine(b)
	if v != headOK {
		return nil, fields, 0, v
	}
	for {
		var line []byte
		line, rest, v = nextLine(rest)
		if v != headOK {
			return nil, fields, 0, v
		}
		if len(line) == 0 {
			return first, fields, len(b) - len(rest), headOK
		}
		f, ok := splitField(line)
		if !ok || len(fields) >= max {
			return nil, fields, 0, headNotFast
		}
		fields = append(fields, f)
	}
}

// markConnNames makes the fields named in Connection hop-by-hop.
func markConnNames(fields []headField, names [][]byte) {
	for i := range fields {
		for _, n := range names {
			if bytes.EqualFold(fields[i].name, n) {
				fields[i].kind = fieldHop
			}
		}
	}
}

// nextLine splits off one CRLF-terminated line. A bare LF or CR is not
// fast (net/http accepts a bare LF; the fast path does not bother).
func nextLine(b []byte) (line, rest []byte, v headVerdict) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		if bytes.IndexByte(b, '\r') >= 0 && b[len(b)-1] != '\r' {
			return nil, nil, headNotFast
		}
		return nil, nil, headNeedMore
	}
	if i == 0 || b[i-1] != '\r' || bytes.IndexByte(b[:i-1], '\r') >= 0 {
		return nil, nil, headNotFast
	}
	return b[:i-1], b[i+1:], headOK
}

// requestLine accepts "METHOD SP origin-form SP HTTP/1.x".
func (h *fastHead) requestLine(line []byte) bool {
	sp := bytes.IndexByte(line, ' ')
	if sp <= 0 {
		return false
	}
	h.method = line[:sp]
	for _, c := range h.method {
		if !isTchar(c) {
			return false
		}
	}
	if string(h.method) == "CONNECT" || string(h.method) == "PRI" {
		return false
	}
	rest := line[sp+1:]
	sp = bytes.IndexByte(rest, ' ')
	if sp <= 0 {
		return false
	}
	h.target = rest[:sp]
	switch string(rest[sp+1:]) {
	case "HTTP/1.1":
	case "HTTP/1.0":
		h.http10 = true
	default:
		return false
	}
	if h.target[0] != '/' {
		return false // "*", absolute-form
	}
	h.path = h.target
	for i, c := range h.target {
		if c == '?' {
			h.path = h.target[:i]
			for _, c := range h.target[i+1:] {
				if c <= ' ' || c >= 0x7f || c == '#' {
					return false
				}
			}
			break
		}
		if !isPathChar(c) {
			return false
		}
	}
	return true
}

// isPathChar: the bytes of a path whose escaped form (url.URL.EscapedPath)
// is the path itself, with no '%' (so the raw path is the decoded one).
func isPathChar(c byte) bool { return isAlnum(c) || strings.IndexByte("-._~!$&'()*+,;=:@/", c) >= 0 }

func isTchar(c byte) bool { return isAlnum(c) || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0 }

func isAlnum(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// splitField splits "name: value" with a token name, no space before the
// colon, and a value of visible bytes, spaces, tabs and obs-text.
func splitField(line []byte) (headField, bool) {
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		return headField{}, false
	}
	name := line[:colon]
	for _, c := range name {
		if !isTchar(c) {
			return headField{}, false
		}
	}
	val := line[colon+1:]
	for _, c := range val {
		if c < ' ' && c != '\t' || c == 0x7f {
			return headField{}, false
		}
	}
	return headField{name: name, value: bytes.Trim(val, " \t")}, true
}

// validFastHost: a host[:port] of letters, digits and "-._:[]", which
// needs no quoting in Forwarded and which net/http accepts.
func validFastHost(v []byte) bool {
	if len(v) == 0 {
		return false
	}
	for _, c := range v {
		if !isAlnum(c) && strings.IndexByte("-._:[]", c) < 0 {
			return false
		}
	}
	return true
}

// connTokens are a Connection header's tokens.
type connTokens struct {
	close, keepAlive, upgrade bool
	names                     [][]byte // other tokens: header names, hop-by-hop
}

func (c *connTokens) add(v []byte) {
	for len(v) > 0 {
		var t []byte
		t, v = nextToken(v)
		switch {
		case len(t) == 0:
		case equalFoldASCII(t, "close"):
			c.close = true
		case equalFoldASCII(t, "keep-alive"):
			c.keepAlive = true
		case equalFoldASCII(t, "upgrade"):
			c.upgrade = true
		default:
			c.names = append(c.names, t)
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

// hasToken reports whether a comma-separated list holds token
// (case-insensitive; token in lower case).
func hasToken(v []byte, token string) bool {
	for len(v) > 0 {
		var t []byte
		if t, v = nextToken(v); equalFoldASCII(t, token) {
			return true
		}
	}
	return false
}

// hostForMatch is the host the router matches: the Host header without
// its port (as net.SplitHostPort splits it), lower case, no trailing dot,
// written into dst.
func hostForMatch(dst, host []byte) []byte {
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
