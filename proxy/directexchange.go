package proxy

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httputil"
	"strconv"
	"strings"
	"time"

	"github.com/edgeshim/edgeshim/limits/accesslog"
	"github.com/edgeshim/edgeshim/proxy/internal/h1"
	"github.com/edgeshim/edgeshim/proxy/upstream"
)

// The direct exchange: HTTP/2 requests on fast routes (every backend
// plain http://, no decompress: the HTTP/1.1 fast path's test) skip
// httputil.ReverseProxy. The backend request head is written as bytes
// with the fast path's policy functions (forwarded.appendLines,
// appendOutPath, its hop-by-hop list), exchanged over the fast path's
// backend pool in the policy's retry loop (attempts, classify), the
// response head parsed by the fast path's parser (readRespHead) and
// relayed through the stream's ResponseWriter. The middleware chain
// (limits, access log, metrics, Alt-Svc) stays as it is for HTTP/2.
//
// Not taken (ReverseProxy serves them as before): request bodies of
// unknown length or over syncMaxBody, Expect, upgrades.

// directOK reports whether r may take the direct exchange.
func (rp *routeProxy) directOK(r *http.Request) bool {
	return rp.fast != nil && !rp.route.Decompress && r.ProtoMajor == 2 && syncOK(r)
}

// directScratch is what serveDirect reuses from request to request: buf
// holds the outgoing head and body, then the response body on its way
// through; line the request line; rh the parsed response head.
type directScratch struct {
	buf, line []byte
	rh        upstream.RespHead
}

// serveDirect proxies r (directOK) to the route's pool.
func (rp *routeProxy) serveDirect(w http.ResponseWriter, r *http.Request) {
	rp.direct.Add(1)
	ctx := r.Context()
	sc, _ := rp.scratch.Get().(*directScratch)
	if sc == nil {
		sc = &directScratch{buf: make([]byte, 0, 16<<10)}
	}
	defer rp.scratch.Put(sc)
	path := r.URL.EscapedPath()
	// The request line goes in front, per backend, in room.
	room := len(r.Method) + len(path) + len(r.URL.RawQuery) + rp.fast.MaxPath + 20
	buf := rp.appendDirectHead(append(sc.buf[:0], make([]byte, room)...), r)
	hasBody := r.ContentLength > 0
	if hasBody {
		n := len(buf)
		buf = append(buf, make([]byte, r.ContentLength)...)
		if _, err := io.ReadFull(r.Body, buf[n:]); err != nil {
			rp.errorHandler(w, r, why(r, nil, upstream.BodyError(err)))
			return
		}
	}
	sc.buf = buf[:0]
	a := rp.up.Attempts(upstream.Idempotent(r.Method, hasBody))
	replayable := upstream.Replayable(r.Method, hasBody)
	line, rh := sc.line[:0], &sc.rh
	defer func() { sc.line = line[:0] }()
	for {
		b, err := a.Next()
		if err != nil {
			rp.errorHandler(w, r, err)
			return
		}
		line = append(line[:0], r.Method...)
		line = append(line, ' ')
		line = upstream.AppendOutPath(line, b.Conns.Path, rp.strip, path)
		if r.URL.RawQuery != "" || r.URL.ForceQuery {
			line = append(line, '?')
			line = append(line, r.URL.RawQuery...)
		}
		line = append(line, " HTTP/1.1\r\n"...)
		out := buf[room-len(line):]
		copy(out, line)
		start := time.Now()
		b.Begin()
		x, err := b.Conns.Exchange(ctx, replayable, rp.route.Proxy.Timeouts.ResponseHeader.D(), func(bc *upstream.Conn) error {
			if _, err := bc.C.Write(out); err != nil {
				return err
			}
			n, err := readFinalHead(bc, rh)
			if err == nil {
				bc.R.Discard(n)
			}
			return err
		})
		if err != nil {
			b.End()
			err = why(r, nil, err)
			if a.Failed(b, err) {
				continue
			}
			accesslog.FromContext(ctx).SetUpstream(b.Name)
			rp.errorHandler(w, r, b.Failed(err))
			return
		}
		rp.answered(b)
		accesslog.FromContext(ctx).SetUpstream(b.Name)
		b.Metrics.Codes.Inc(rh.Code)
		b.Metrics.Duration.Observe(time.Since(start).Seconds())
		defer b.End()
		relayDirect(w, x, rh, r.Method == http.MethodHead, buf[:cap(buf)])
		return
	}
}

// readFinalHead reads the response head after any 1xx (dropped, as
// syncExchange does); 101 is a bad response (no upgrade is sent).
func readFinalHead(bc *upstream.Conn, rh *upstream.RespHead) (int, error) {
	for {
		n, err := upstream.ReadRespHead(bc.R, rh)
		switch {
		case err != nil:
			return 0, err
		case rh.Code == http.StatusSwitchingProtocols:
			return 0, upstream.ErrBadResponse
		case rh.Code >= 200:
			return n, nil
		}
		bc.R.Discard(n)
	}
}

// appendDirectHead appends r's outgoing header lines as appendOutHead
// does for the HTTP/1.1 fast path: Host, the client's fields but the
// hop-by-hop ones, the policy's forwarded lines, Content-Length, Te:
// trailers; then the blank line.
func (rp *routeProxy) appendDirectHead(b []byte, r *http.Request) []byte {
	peer := upstream.PeerAddr(r.RemoteAddr)
	f := upstream.Forwarded[string]{Peer: peer, Host: r.Host, TLS: r.TLS != nil, Trusted: rp.trusted.Has(peer)}
	b = append(b, "Host: "...)
	b = append(b, r.Host...)
	b = append(b, "\r\n"...)
	te := false
	for k, vs := range r.Header {
		switch k {
		case "Host", "Content-Length", "Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
			"Proxy-Authorization", "Trailer", "Transfer-Encoding", "Upgrade":
			continue
		case "Te":
			for _, v := range vs {
				te = te || h1.HasToken([]byte(v), "trailers")
			}
			continue
		case "X-Forwarded-For":
			f.XFF = vs
			continue
		case "X-Forwarded-Host":
			f.XFH = vs[0]
			continue
		case "X-Forwarded-Proto":
			f.XFP = vs[0]
			continue
		case "Forwarded":
			f.Fwd = vs
			continue
		}
		for _, v := range vs {
			b = append(b, k...)
			b = append(b, ": "...)
			b = append(b, v...)
			b = append(b, "\r\n"...)
		}
	}
	b = f.AppendLines(b)
	switch m := r.Method; {
	case r.ContentLength > 0, m == http.MethodPost || m == http.MethodPut || m == http.MethodPatch:
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, r.ContentLength, 10)
		b = append(b, "\r\n"...)
	}
	if te {
		b = append(b, "Te: trailers\r\n"...)
	}
	return append(b, "\r\n"...)
}

// relayDirect writes the response head and body to w, then returns the
// backend connection to its pool if it can be reused. A backend body that
// breaks off aborts the stream (http.ErrAbortHandler, as ReverseProxy).
func relayDirect(w http.ResponseWriter, x *upstream.Exchange, rh *upstream.RespHead, head bool, buf []byte) {
	h := w.Header()
	// The values, one string for all, and their one-element lists, one
	// array for all: two allocations rather than two per field.
	n, size := 0, 0
	for i := range rh.Fields {
		if f := &rh.Fields[i]; f.Kind == h1.Pass {
			n, size = n+1, size+len(f.Value)
		}
	}
	var all strings.Builder
	all.Grow(size)
	for i := range rh.Fields {
		if f := &rh.Fields[i]; f.Kind == h1.Pass {
			all.Write(f.Value)
		}
	}
	vals, lists, at := all.String(), make([]string, n), 0
	for i := range rh.Fields {
		if f := &rh.Fields[i]; f.Kind == h1.Pass {
			v := vals[at : at+len(f.Value)]
			at += len(f.Value)
			k := respKey(f.Name)
			if old, ok := h[k]; ok {
				h[k] = append(old, v)
				continue
			}
			n--
			lists[n] = v
			h[k] = lists[n : n+1 : n+1]
		}
	}
	in := upstream.BodyClose
	switch {
	case head || rh.Code == http.StatusNoContent || rh.Code == http.StatusNotModified:
		in = upstream.BodyNone
	case rh.Chunked:
		in = upstream.BodyChunked
	case rh.HasCL:
		in = upstream.BodyLength
	}
	if rh.HasCL && rh.Code != http.StatusNoContent {
		h["Content-Length"] = []string{strconv.FormatInt(rh.CL, 10)}
	}
	x.Keep = !rh.Conn.Close && (!rh.HTTP10 || rh.Conn.KeepAlive) && in != upstream.BodyClose
	br := x.Conn.R
	w.WriteHeader(rh.Code)
	var err error
	switch in {
	case upstream.BodyNone:
		x.Done(true)
		return
	case upstream.BodyLength:
		for left := rh.CL; left > 0 && err == nil; {
			var n int
			n, err = br.Read(buf[:min(int64(len(buf)), left)])
			left -= int64(n)
			if n > 0 {
				if _, werr := w.Write(buf[:n]); werr != nil {
					x.Done(false)
					return // the client is gone: nothing more to send
				}
			}
			if left == 0 {
				err = nil
			}
		}
	default:
		var src io.Reader = br
		if in == upstream.BodyChunked {
			src = httputil.NewChunkedReader(br)
		}
		fl, _ := w.(http.Flusher)
		for err == nil {
			var n int
			n, err = src.Read(buf)
			if n > 0 {
				if _, werr := w.Write(buf[:n]); werr != nil {
					x.Done(false)
					return
				}
				if fl != nil {
					fl.Flush()
				}
			}
		}
		if err == io.EOF {
			err = nil
			if in == upstream.BodyChunked {
				err = readTrailers(br, h)
			}
		}
	}
	x.Done(err == nil)
	if err != nil {
		panic(http.ErrAbortHandler)
	}
}

// respKeys are response field names common enough to be found without
// an allocation: lower case, canonical.
var respKeys = [...][2]string{{"content-type", "Content-Type"}, {"date", "Date"}, {"server", "Server"},
	{"cache-control", "Cache-Control"}, {"etag", "Etag"}, {"last-modified", "Last-Modified"}, {"vary", "Vary"},
	{"expires", "Expires"}, {"accept-ranges", "Accept-Ranges"}, {"content-encoding", "Content-Encoding"},
	{"location", "Location"}, {"set-cookie", "Set-Cookie"}}

// respKey is name's canonical form (http.Header's key).
func respKey(name []byte) string {
	for _, k := range respKeys {
		if h1.EqualFold(name, k[0]) {
			return k[1]
		}
	}
	return http.CanonicalHeaderKey(string(name))
}

// readTrailers reads a chunked body's trailer section into h (as
// http.TrailerPrefix fields, which the HTTP/2 writer sends as trailers).
func readTrailers(br interface{ ReadSlice(byte) ([]byte, error) }, h http.Header) error {
	total := 0
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if total += len(line); total > 8<<10 {
			return upstream.ErrBadResponse
		}
		if string(line) == "\r\n" {
			return nil
		}
		if len(line) < 2 || line[len(line)-2] != '\r' {
			return upstream.ErrBadResponse
		}
		f, ok := h1.SplitField(line[:len(line)-2])
		if !ok {
			return upstream.ErrBadResponse
		}
		h.Add(http.TrailerPrefix+string(bytes.TrimSpace(f.Name)), string(f.Value))
	}
}
