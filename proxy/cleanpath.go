package proxy

import (
	"errors"
	"net/http"
	"strings"
)

// errPathUnsafe is the reason a request path cannot be normalised: it
// climbs above the root, or carries an encoded '/', a backslash or a NUL,
// whose meaning differs between the edge and the backends behind it.
var errPathUnsafe = errors.New("path cannot be normalised")

// cleanPath is what routing sees and what is forwarded: the decoded path
// with dot-segments removed (RFC 3986 5.2.4) and runs of '/' merged, as
// nginx does. raw is the path as the client escaped it (url.URL's
// EscapedPath), decoded the path net/http made of it. An encoded '/'
// (%2F), a backslash (raw or %5C), a NUL or a ".." above the root is
// errPathUnsafe: a backend could read such a path differently from the
// route that matched it.
func cleanPath(decoded, raw string) (string, error) {
	if decoded == "" || decoded[0] != '/' {
		return "", errPathUnsafe
	}
	if strings.ContainsAny(decoded, "\\\x00") || containsFold(raw, "%2f") || containsFold(raw, "%5c") {
		return "", errPathUnsafe
	}
	if isCleanPath(decoded) {
		return decoded, nil
	}
	segs := strings.Split(decoded[1:], "/")
	out := make([]string, 0, len(segs))
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case "", ".":
			if last && len(out) > 0 {
				out = append(out, "") // keep the trailing slash: "/a/." is "/a/"
			}
		case "..":
			if len(out) == 0 {
				return "", errPathUnsafe
			}
			out = out[:len(out)-1]
			if last {
				out = append(out, "")
			}
		default:
			out = append(out, s)
		}
	}
	return "/" + strings.Join(out, "/"), nil
}

// isCleanPath reports whether p (starting with '/') has no empty, "." or
// ".." segment but a trailing slash: the common case, kept without
// allocating.
func isCleanPath(p string) bool {
	for i := 0; i < len(p); i++ {
		if p[i] != '/' {
			continue
		}
		rest := p[i+1:]
		switch {
		case rest == "":
			return true // a trailing slash
		case rest[0] == '/':
			return false
		case rest[0] == '.':
			if len(rest) == 1 || rest[1] == '/' {
				return false
			}
			if rest[1] == '.' && (len(rest) == 2 || rest[2] == '/') {
				return false
			}
		}
	}
	return true
}

func containsFold(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if strings.EqualFold(s[i:i+len(sub)], sub) {
			return true
		}
	}
	return false
}

// normalizePath routes and forwards the request by its clean path (see
// cleanPath); a path that cannot be normalised is answered 400 (false).
func normalizePath(w http.ResponseWriter, req *http.Request) bool {
	clean, err := cleanPath(req.URL.Path, req.URL.EscapedPath())
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad path: "+err.Error())
		return false
	}
	if clean != req.URL.Path {
		req.URL.Path, req.URL.RawPath = clean, ""
	}
	return true
}
