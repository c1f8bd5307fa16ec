package proxy

import (
	"bufio"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/edgeshim/edgeshim/proxy/upstream"
)

// The synchronous backend exchange of the net/http path (HTTP/2, HTTP/3
// and HTTP/1 requests that left the fast path) for http:// backends.
//
// http.Transport runs two goroutines per backend connection (readLoop,
// writeLoop) and hands every request and response between them and the
// caller through channels: for HTTP/2 that was a quarter of edgeshim's
// CPU per request. The stream's handler goroutine already exists, so the
// exchange is done in it: a connection from the fast path's backend pool
// (upstream.Conns), the request written with Request.Write, the response
// head read with http.ReadResponse, the body relayed by ReverseProxy from
// the connection, which goes back to the pool when the body has been read
// to its end. Everything else — rewrite, hop-by-hop headers, retries on
// another backend, ejection, timeouts, error answers, metrics — stays
// ReverseProxy's and poolTransport's.
//
// Not taken (http.Transport serves them as before): upgrades, and request
// bodies of unknown length or over syncMaxBody (a backend that answers
// before reading a long body is served best by the Transport's concurrent
// write and read).

// syncMaxBody is the largest request body sent synchronously.
const syncMaxBody = 64 << 10

// syncOK reports whether req may take the synchronous exchange.
func syncOK(req *http.Request) bool {
	if req.ContentLength < 0 || req.ContentLength > syncMaxBody || isUpgrade(req) {
		return false
	}
	return req.Header.Get("Expect") == ""
}

// bufWriters recycle the writers requests are written through.
var bufWriters = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 4<<10) }}

// syncExchange sends req to fb and returns the response head; the body
// reads from the backend connection. hdrTimeout bounds the wait for the
// head (limits of the route: timeouts.response_header).
func syncExchange(fb *upstream.Conns, req *http.Request, hdrTimeout time.Duration) (*http.Response, error) {
	replayable := upstream.Replayable(req.Method, req.Body != nil && req.Body != http.NoBody)
	var resp *http.Response
	x, err := fb.Exchange(req.Context(), replayable, hdrTimeout, func(bc *upstream.Conn) error {
		bw := bufWriters.Get().(*bufio.Writer)
		bw.Reset(bc.C)
		err := req.Write(bw)
		if err == nil {
			err = bw.Flush()
		}
		bw.Reset(nil)
		bufWriters.Put(bw)
		for err == nil {
			resp, err = http.ReadResponse(bc.R, req)
			if err != nil || resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
				break
			}
			// 1xx informational: the final answer follows.
			io.Copy(io.Discard, resp.Body)
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	x.Keep = !resp.Close
	resp.Body = &syncBody{rc: resp.Body, x: x}
	return resp, nil
}

// syncBody is a response body read from a pooled backend connection: read
// to its end it puts the connection back, else closes it.
type syncBody struct {
	rc  io.ReadCloser
	x   *upstream.Exchange
	eof bool
}

func (b *syncBody) Read(p []byte) (int, error) {
	n, err := b.rc.Read(p)
	if err == io.EOF {
		b.eof = true
		b.x.Done(true)
	}
	return n, err
}

func (b *syncBody) Close() error {
	err := b.rc.Close()
	b.x.Done(b.eof)
	return err
}
