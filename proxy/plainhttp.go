package proxy

import (
	"net"
	"net/http"
	"strconv"
	"strings"
)

// plainHTTP is the handler of listen.http: routes with allow_http are
// served, every other request is redirected to HTTPS with 308 (method and
// body kept). ACME HTTP-01 challenges are answered in front of it.
// httpsAddr is the bound HTTPS address (its port goes into the redirect
// unless it is 443).
func (rt *router) plainHTTP(httpsAddr func() net.Addr) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if !normalizePath(w, req) {
			return
		}
		if r := rt.match(req); r != nil && r.plain {
			r.serve(w, req)
			return
		}
		host := req.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		if host == "" || strings.ContainsAny(host, "/\\@?#") {
			writeError(w, http.StatusBadRequest, "missing or bad Host header")
			return
		}
		if strings.Contains(host, ":") {
			host = "[" + host + "]" // IPv6 literal
		}
		port := ""
		if a, ok := httpsAddr().(*net.TCPAddr); ok && a.Port != 443 {
			port = strconv.Itoa(a.Port)
		}
		if port != "" {
			host = net.JoinHostPort(strings.Trim(host, "[]"), port)
		}
		w.Header().Set("Connection", "close")
		http.Redirect(w, req, "https://"+host+req.URL.RequestURI(), http.StatusPermanentRedirect)
	})
}
