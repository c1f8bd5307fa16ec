package fast

import (
	"bytes"
	"strings"

	"github.com/edgeshim/edgeshim/proxy/internal/h1"
)

// reqHead is one HTTP/1 request head as the fast path reads it: a strict
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
type reqHead struct {
	method []byte
	target []byte // origin-form: path[?query]
	path   []byte // the path of target, no '%' in it: raw == decoded
	http10 bool
	host   []byte
	// contentLength is the body length; 0 when there is none.
	contentLength int64
	hasCL         bool
	conn          h1.ConnTokens
	teTrailers    bool // TE: trailers (passed on, as ReverseProxy does)
	fields        []h1.Field
}

// maxFastFields bounds the header lines of a fast request.
const maxFastFields = 100

// parseHead parses the request head at the start of b. It returns the
// head's length in bytes when the verdict is h1.OK. maxFields is the
// header count limit (more lines: not fast, net/http answers 431).
func parseHead(b []byte, h *reqHead, maxFields int) (int, h1.Verdict) {
	*h = reqHead{fields: h.fields[:0], conn: h1.ConnTokens{Names: h.conn.Names[:0]}}
	line, fields, n, v := h1.SplitHead(b, h.fields, min(maxFields, maxFastFields))
	h.fields = fields
	if v != h1.OK {
		return 0, v
	}
	if !h.requestLine(line) {
		return 0, h1.NotFast
	}
	nHost, nCL := 0, 0
	for i := range h.fields {
		f := &h.fields[i]
		switch {
		case h1.EqualFold(f.Name, "host"):
			nHost++
			if nHost > 1 || !validFastHost(f.Value) {
				return 0, h1.NotFast
			}
			h.host = f.Value
			f.Kind = h1.Hop // written first, by the proxy
		case h1.EqualFold(f.Name, "content-length"):
			nCL++
			n, ok := h1.ParseContentLength(f.Value)
			if nCL > 1 || !ok {
				return 0, h1.NotFast
			}
			h.contentLength, h.hasCL = int64(n), true
			f.Kind = h1.Hop // rewritten by the proxy
		case h1.EqualFold(f.Name, "transfer-encoding"), h1.EqualFold(f.Name, "expect"),
			h1.EqualFold(f.Name, "upgrade"):
			return 0, h1.NotFast
		case h1.EqualFold(f.Name, "connection"):
			if h.conn.Add(f.Value); h.conn.Upgrade || len(h.conn.Names) > 16 {
				return 0, h1.NotFast
			}
			f.Kind = h1.Hop
		case h1.EqualFold(f.Name, "te"):
			h.teTrailers = h.teTrailers || h1.HasToken(f.Value, "trailers")
			f.Kind = h1.Hop
		case h1.IsHopHeader(f.Name), h1.EqualFold(f.Name, "trailer"):
			f.Kind = h1.Hop
		case h1.EqualFold(f.Name, "x-forwarded-for"):
			f.Kind = h1.XFF
		case h1.EqualFold(f.Name, "x-forwarded-host"):
			f.Kind = h1.XFH
		case h1.EqualFold(f.Name, "x-forwarded-proto"):
			f.Kind = h1.XFP
		case h1.EqualFold(f.Name, "forwarded"):
			f.Kind = h1.Fwd
		}
	}
	if nHost == 0 {
		return 0, h1.NotFast // HTTP/1.1 requires it; HTTP/1.0 without one is rare
	}
	h1.MarkConnNames(h.fields, h.conn.Names)
	return n, h1.OK
}

// requestLine accepts "METHOD SP origin-form SP HTTP/1.x".
func (h *reqHead) requestLine(line []byte) bool {
	sp := bytes.IndexByte(line, ' ')
	if sp <= 0 {
		return false
	}
	h.method = line[:sp]
	for _, c := range h.method {
		if !h1.IsTchar(c) {
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
func isPathChar(c byte) bool { return h1.IsAlnum(c) || strings.IndexByte("-._~!$&'()*+,;=:@/", c) >= 0 }

// validFastHost: a host[:port] of letters, digits and "-._:[]", which
// needs no quoting in Forwarded and which net/http accepts.
func validFastHost(v []byte) bool {
	if len(v) == 0 {
		return false
	}
	for _, c := range v {
		if !h1.IsAlnum(c) && strings.IndexByte("-._:[]", c) < 0 {
			return false
		}
	}
	return true
}
