package config

import (
	"net/http"
	"strings"

	"golang.org/x/net/http/httpguts"
)

// validateTemplate checks poll.template's data; the bridge parses and
// trial-renders the template itself at start.
func (pl Poll) validateTemplate(e *errs, p string) {
	t := pl.Template
	if pl.Format != "template" {
		if t != nil {
			e.add(p+".template", "needs format template (got format %q)", pl.Format)
		}
		return
	}
	if t == nil || t.Body == "" {
		e.add(p+".template.body", "is required with format template")
		return
	}
	if pl.EmptyBody != "" {
		e.add(p+".empty_body", "is not used with format template: set template.empty")
	}
	if t.Empty != "" && pl.EmptyStatus == 204 {
		e.add(p+".template.empty", "needs empty_status 200 (a 204 has no body)")
	}
	if t.Status < 200 || t.Status > 299 || t.Status == 204 || t.Status == 205 {
		e.add(p+".template.status", "must be a 2xx status with a body (got %d)", t.Status)
	}
	if !httpguts.ValidHeaderFieldValue(t.ContentType) || t.ContentType == "" {
		e.add(p+".template.content_type", "must be a valid header value (got %q)", t.ContentType)
	}
	for k, v := range t.Headers {
		switch {
		case !httpguts.ValidHeaderFieldName(k):
			e.add(p+".template.headers", "invalid header name %q", k)
		case !httpguts.ValidHeaderFieldValue(v):
			e.add(p+".template.headers."+k, "invalid header value")
		case oneOf(http.CanonicalHeaderKey(k), "Content-Length", "Transfer-Encoding", "Connection", "Content-Type", "Trailer", "Upgrade", "Keep-Alive"):
			e.add(p+".template.headers."+k, "is set by edgeshim (content_type sets Content-Type)")
		case strings.HasPrefix(http.CanonicalHeaderKey(k), "X-Command-"):
			e.add(p+".template.headers."+k, "X-Command-* is edgeshim's")
		}
	}
	if t.MaxBytes < 1 || t.MaxBytes > 64<<20 {
		e.add(p+".template.max_bytes", "must be 1B-64MiB (got %d)", t.MaxBytes)
	}
}
