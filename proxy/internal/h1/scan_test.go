package h1

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
)

// scanAll feeds payload to a new scanner in pieces of size step (0: at
// once) and returns it.
func scanAll(payload string, step int) *Scanner {
	s := NewScanner()
	p := []byte(payload)
	if step <= 0 {
		step = len(p) + 1
	}
	for len(p) > 0 {
		n := min(step, len(p))
		s.Feed(p[:n])
		p = p[n:]
	}
	return &s
}

func TestH1Scanner(t *testing.T) {
	const (
		get     = "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
		cl5     = "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
		chunked = "POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Trailer: 1\r\n\r\n"
		clte    = "POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
		// A head that would be refused, hidden in a body.
		hidden = "GET /h HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
	)
	long := strings.Repeat("a", 3*maxKeep)
	for _, tc := range []struct {
		name    string
		payload string
		flagged int
		stopped bool
		heads   int // heads completed (when not stopped)
	}{
		{"one GET", get, -1, false, 1},
		{"pipelined framings", get + cl5 + chunked + get, -1, false, 4},
		{"CL+TE after three", get + cl5 + chunked + clte, 3, true, 0},
		{"TE then CL", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n", 0, true, 0},
		{"lower case names", "POST / HTTP/1.1\r\ncontent-length: 4\r\ntransfer-encoding: chunked\r\n\r\n", 0, true, 0},
		{"upper case names", "POST / HTTP/1.1\r\nCONTENT-LENGTH: 4\r\nTRANSFER-ENCODING: CHUNKED\r\n\r\n", 0, true, 0},
		{"chunked with other codings", "POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 0, true, 0},
		{"two TE lines", "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n", 0, true, 0},
		{"TE identity with CL", "POST / HTTP/1.1\r\nTransfer-Encoding: identity\r\nContent-Length: 4\r\n\r\n", 0, true, 0},
		{"HTTP/1.0 CL+TE", "POST / HTTP/1.0\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\nabcd", 0, true, 0},
		{"whitespace around", "POST / HTTP/1.1\r\nContent-Length:4 \r\nTransfer-Encoding:\t chunked \r\n\r\n", 0, true, 0},
		{"bare LF lines", "POST / HTTP/1.1\nContent-Length: 4\nTransfer-Encoding: chunked\n\n", 0, true, 0},
		{"hidden in a CL body", "POST / HTTP/1.1\r\nContent-Length: 66\r\n\r\n" + hidden + get, -1, false, 2},
		{"hidden in chunk data", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n42\r\n" + hidden + "\r\n0\r\n\r\n" + clte, 1, true, 0},
		{"HTTP/1.0 TE only has no body", "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n" + get, -1, false, 2},
		{"obs-fold is a continuation", "GET / HTTP/1.1\r\nX-A: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n" + get, -1, false, 2},
		{"folded TE value with CL", "POST / HTTP/1.1\r\nTransfer-Encoding:\r\n chunked\r\nContent-Length: 4\r\n\r\n", 0, true, 0},
		{"folded CL value stops", "POST / HTTP/1.1\r\nContent-Length:\r\n 4\r\n\r\nabcd" + clte, -1, true, 0},
		{"long header line then CL+TE", "POST / HTTP/1.1\r\nCookie: " + long + "\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", 0, true, 0},
		{"long CL+TE lines", "POST / HTTP/1.1\r\nTransfer-Encoding: " + long + "\r\nContent-Length: 4" + long + "\r\n\r\n", 0, true, 0},
		{"long target", "GET /" + long + " HTTP/1.1\r\nHost: x\r\n\r\n" + clte, 1, true, 0},
		{"long target, bad version", "GET /" + long + " HTTP/2.0\r\n\r\n" + clte, -1, true, 0},
		{"equal duplicate CL", "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello" + get, -1, false, 2},
		{"differing CL stops", "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 05\r\n\r\nhello" + clte, -1, true, 0},
		{"bad CL stops", "POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello" + clte, -1, true, 0},
		{"TE gzip alone stops", "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n" + clte, -1, true, 0},
		{"chunk size without CR stops", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n" + clte, -1, true, 0},
		{"chunk data without CRLF stops", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloX\r\n0\r\n\r\n" + clte, -1, true, 0},
		{"17 hex digits stops", "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000005\r\nhello\r\n0\r\n\r\n" + clte, -1, true, 0},
		{"malformed request line stops", "GARBAGE\r\n\r\n" + clte, -1, true, 0},
		{"empty line before request stops", "\r\n" + clte, -1, true, 0},
		{"line without colon stops", "GET / HTTP/1.1\r\nnocolon\r\n\r\n" + clte, -1, true, 0},
		{"h2 preface stops", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", -1, true, 0},
		{"huge CL body", "POST / HTTP/1.1\r\nContent-Length: 9223372036854775807\r\n\r\n" + clte, -1, false, 1},
		{"CL overflow stops", "POST / HTTP/1.1\r\nContent-Length: 9223372036854775808\r\n\r\n" + clte, -1, true, 0},
	} {
		for _, step := range []int{0, 1, 7, 4096} {
			s := scanAll(tc.payload, step)
			if s.Flagged() != tc.flagged || s.Stopped() != tc.stopped {
				t.Errorf("%s (step %d): flagged %d stopped %v, want %d %v", tc.name, step, s.Flagged(), s.Stopped(), tc.flagged, tc.stopped)
			}
			if !tc.stopped && s.index != tc.heads {
				t.Errorf("%s (step %d): %d heads, want %d", tc.name, step, s.index, tc.heads)
			}
			if cap(s.buf) > maxKeep {
				t.Errorf("%s (step %d): kept %d bytes of a line", tc.name, step, cap(s.buf))
			}
		}
	}
}

// hasCLAndTE is a plain reading of one raw request head: does any field
// line (not a continuation) name both Content-Length and Transfer-Encoding.
func hasCLAndTE(head []byte) bool {
	var cl, te bool
	for i, line := range bytes.Split(head, []byte("\n")) {
		if i == 0 || len(line) == 0 || line[0] == ' ' || line[0] == '\t' {
			continue
		}
		name, _, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		name = bytes.TrimSpace(name)
		cl = cl || bytes.EqualFold(name, []byte("Content-Length"))
		te = te || bytes.EqualFold(name, []byte("Transfer-Encoding"))
	}
	return cl && te
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// FuzzH1Scanner checks the scanner against net/http's own request reader
// on the same stream: net/http's framing (the byte offsets where each head
// and body end) gives each head; the scanner must flag exactly the first
// head net/http read that carries both CL and TE, unless it stopped
// before that head; it must keep count of heads; and feeding it in pieces
// must not change its verdict.
func FuzzH1Scanner(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhelloGET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;e\r\nhello\r\n0\r\nT: 1\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"POST / HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n Transfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
	} {
		f.Add(s, uint8(0))
		f.Add(s, uint8(3))
	}
	f.Fuzz(func(t *testing.T, stream string, step uint8) {
		whole := scanAll(stream, 0)
		pieces := scanAll(stream, int(step))
		if whole.Flagged() != pieces.Flagged() || whole.Stopped() != pieces.Stopped() || whole.index != pieces.index {
			t.Fatalf("verdict depends on read sizes: whole %d/%v/%d, in pieces of %d %d/%v/%d",
				whole.Flagged(), whole.Stopped(), whole.index, step, pieces.Flagged(), pieces.Stopped(), pieces.index)
		}
		if cap(pieces.buf) > maxKeep {
			t.Fatalf("kept %d bytes of a line", cap(pieces.buf))
		}
		s := whole
		cr := &countingReader{r: strings.NewReader(stream)}
		br := bufio.NewReader(cr)
		var start int
		for i := 0; ; i++ {
			req, err := http.ReadRequest(br)
			if err != nil {
				if err == io.EOF && !s.Stopped() && s.index != i {
					t.Fatalf("net/http read %d heads to a clean end, the scanner %d", i, s.index)
				}
				return
			}
			headEnd := cr.n - br.Buffered()
			both := hasCLAndTE([]byte(stream[start:headEnd]))
			switch {
			case s.Flagged() == i && !both:
				t.Fatalf("flagged head %d without CL and TE: %q", i, stream[start:headEnd])
			case both && s.Flagged() != i && !(s.Stopped() && s.Flagged() < 0 && s.index <= i):
				t.Fatalf("head %d has CL and TE but flagged=%d stopped=%v at head %d: %q", i, s.Flagged(), s.Stopped(), s.index, stream[start:headEnd])
			case !both && s.Flagged() < 0 && !s.Stopped() && s.index <= i:
				t.Fatalf("net/http read head %d, the scanner only %d", i, s.index)
			}
			if both {
				return // edgeshim refuses it and closes the connection
			}
			if _, err := io.Copy(io.Discard, req.Body); err != nil {
				return // net/http closes the connection
			}
			start = cr.n - br.Buffered()
		}
	})
}

// BenchmarkH1Scanner: the cost the scanner adds to each read of a
// keep-alive connection, for a typical small request head.
func BenchmarkH1Scanner(b *testing.B) {
	head := []byte("GET /devices/door-17/commands?wait=30 HTTP/1.1\r\nHost: edge.example.com\r\nUser-Agent: door/1.2\r\nAccept: */*\r\nAuthorization: Bearer 0123456789abcdef\r\n\r\n")
	s := NewScanner()
	b.SetBytes(int64(len(head)))
	for b.Loop() {
		s.Feed(head)
	}
	if s.Stopped() {
		b.Fatal("stopped")
	}
}
