package h1

import "bytes"

// Scanner follows the HTTP/1 request framing of one connection's
// plaintext, byte for byte as net/http will read it, to find the first
// request head that carries both Content-Length and Transfer-Encoding.
// net/http deletes Content-Length when Transfer-Encoding is chunked
// (RFC 9112 §6.3) and ignores Transfer-Encoding on HTTP/1.0, so a handler
// cannot see that a request had both; an edge must refuse it.
//
// It frames requests as net/http does: the head (request line, header
// lines, obs-fold continuations), then a body by Transfer-Encoding: chunked
// (chunk-size lines, data, CRLF, last chunk, trailer lines) or
// Content-Length, or none. It never rejects anything itself: when the
// stream is not what it can frame the way net/http would (a malformed
// line, an unsupported coding, an over-long line), it stops scanning and
// leaves the verdict to net/http, which parses strictly and closes the
// connection on such input. Heads are indexed from 0 in arrival order,
// which is the order net/http hands them to the handler.
//
// It keeps O(1) state: at most maxKeep bytes of a line that spans reads.
type Scanner struct {
	st      scanState
	index   int // index of the request head being read
	flagged int // index of the first head with both CL and TE, or -1

	// The current line when it spans reads: its first maxKeep bytes, its
	// last len(tail) bytes and its length.
	buf     []byte
	tail    [10]byte
	lineLen int

	remain uint64 // body or chunk bytes left
	crlf   int    // bytes of the CRLF after chunk data seen

	h headState
}

// headState is what the scanner keeps of one request head.
type headState struct {
	http10 bool
	cl, te int // number of Content-Length, Transfer-Encoding lines
	// The first Content-Length value: its length and number (two valid
	// values are the same string exactly when both are equal).
	clLen    int
	clN      uint64
	clBad    bool // a value net/http refuses, or differing values
	chunked  bool // the first Transfer-Encoding value is "chunked"
	unknown  bool // a CL/TE value this scanner cannot judge (folded, truncated)
	lastKind hdrKind
	bad      bool // a line net/http refuses
}

type hdrKind uint8

const (
	hdrOther hdrKind = iota
	hdrCL
	hdrTE
)

type scanState uint8

const (
	stRequestLine scanState = iota
	stHeader
	stBody
	stChunkSize
	stChunkData
	stChunkEnd
	stTrailer
	stStopped
)

const (
	// maxKeep bounds the bytes kept of a line that spans reads; net/http's
	// own chunk-size line limit is the same.
	maxKeep = 4096
	// maxHeadLine is longer than any head line net/http accepts with
	// edgeshim's header limits; past it the scanner gives up.
	maxHeadLine = 1 << 20
)

// NewScanner returns a scanner at the start of a connection.
func NewScanner() Scanner { return Scanner{flagged: -1} }

// Flagged returns the index of the first request head that carried both
// Content-Length and Transfer-Encoding, or -1.
func (s *Scanner) Flagged() int { return s.flagged }

// Stopped reports whether the scanner has stopped: it found a CL+TE head
// (after which the connection is closed) or lost the framing.
func (s *Scanner) Stopped() bool { return s.st == stStopped }

func (s *Scanner) stop() {
	s.st = stStopped
	s.buf = nil
}

// Feed scans the next bytes of the stream.
func (s *Scanner) Feed(p []byte) {
	for len(p) > 0 {
		switch s.st {
		case stStopped:
			return
		case stBody, stChunkData:
			n := s.remain
			if uint64(len(p)) < n {
				n = uint64(len(p))
			}
			s.remain -= n
			p = p[n:]
			if s.remain == 0 {
				if s.st == stBody {
					s.st = stRequestLine
				} else {
					s.st, s.crlf = stChunkEnd, 0
				}
			}
		case stChunkEnd:
			if p[0] != "\r\n"[s.crlf] {
				s.stop()
				return
			}
			p = p[1:]
			if s.crlf++; s.crlf == 2 {
				s.st = stChunkSize
			}
		default:
			i := bytes.IndexByte(p, '\n')
			if i < 0 {
				s.appendLine(p)
				if s.lineLen > s.maxLine() {
					s.stop()
				}
				return
			}
			seg := p[:i]
			p = p[i+1:]
			line, truncated := seg, false
			var tail []byte
			if s.lineLen > 0 {
				s.appendLine(seg)
				line, truncated = s.buf, s.lineLen > len(s.buf)
				tail = s.tail[len(s.tail)-min(s.lineLen, len(s.tail)):]
			} else {
				s.lineLen = len(seg)
				tail = seg
			}
			if s.lineLen > s.maxLine() {
				s.stop()
				return
			}
			s.line(line, tail, truncated)
			s.lineLen, s.tail = 0, [len(s.tail)]byte{}
			if cap(s.buf) > 256 {
				s.buf = nil // keep idle connections small
			} else {
				s.buf = s.buf[:0]
			}
		}
	}
}

func (s *Scanner) maxLine() int {
	if s.st == stChunkSize {
		return maxKeep // net/http refuses longer ones; so all of it is kept
	}
	return maxHeadLine
}

// appendLine adds part of a line that spans reads.
func (s *Scanner) appendLine(seg []byte) {
	s.lineLen += len(seg)
	if room := maxKeep - len(s.buf); room > 0 {
		s.buf = append(s.buf, seg[:min(room, len(seg))]...)
	}
	t := s.tail[:]
	if len(seg) >= len(t) {
		copy(t, seg[len(seg)-len(t):])
	} else {
		copy(t, t[len(seg):])
		copy(t[len(t)-len(seg):], seg)
	}
}

// line handles one complete line without its LF. When truncated, line
// holds only the first maxKeep bytes and tail the last ones.
func (s *Scanner) line(line, tail []byte, truncated bool) {
	switch s.st {
	case stRequestLine:
		s.requestLine(line, tail)
	case stHeader:
		line = bytes.TrimSuffix(line, []byte{'\r'})
		if len(line) == 0 && !truncated {
			s.endHead()
			return
		}
		s.headerLine(line, truncated)
	case stChunkSize:
		s.chunkSize(line)
	case stTrailer:
		if len(bytes.TrimSuffix(line, []byte{'\r'})) == 0 && !truncated {
			s.st = stRequestLine
		}
	}
}

func (s *Scanner) requestLine(line, tail []byte) {
	// "METHOD SP target SP HTTP/1.x": net/http takes everything after
	// the second space as the version, which must then be the line's
	// last eight bytes.
	tail = bytes.TrimSuffix(tail, []byte{'\r'})
	sp := bytes.IndexByte(line, ' ')
	if sp <= 0 || len(tail) < 8 {
		s.stop()
		return
	}
	v := tail[len(tail)-8:]
	if !bytes.HasPrefix(v, []byte("HTTP/1.")) || v[7] < '0' || v[7] > '9' || string(line[:sp]) == "PRI" {
		s.stop() // net/http refuses it, or it is the HTTP/2 preface
		return
	}
	s.h = headState{http10: v[7] == '0'}
	s.st = stHeader
}

func (s *Scanner) headerLine(line []byte, truncated bool) {
	h := &s.h
	if line[0] == ' ' || line[0] == '\t' {
		// obs-fold: net/http joins it to the previous field's value.
		if h.lastKind != hdrOther {
			h.unknown = true
		}
		return
	}
	colon := bytes.IndexByte(line, ':')
	if colon < 0 {
		if !truncated {
			h.bad = true // net/http refuses a line without a colon
		}
		// else: a name longer than maxKeep, neither CL nor TE.
		h.lastKind = hdrOther
		return
	}
	name := bytes.Trim(line[:colon], " \t")
	val := bytes.Trim(line[colon+1:], " \t\r")
	switch {
	case EqualFold(name, "content-length"):
		h.lastKind = hdrCL
		n, ok := ParseContentLength(val)
		if h.cl++; h.cl == 1 {
			h.clLen, h.clN, h.clBad = len(val), n, !ok
		} else if !ok || len(val) != h.clLen || n != h.clN {
			h.clBad = true
		}
	case EqualFold(name, "transfer-encoding"):
		h.lastKind = hdrTE
		if h.te++; h.te == 1 {
			h.chunked = EqualFold(val, "chunked")
		}
	default:
		h.lastKind = hdrOther
		return
	}
	if truncated {
		h.unknown = true
	}
}

// endHead decides the body framing of the head just read.
func (s *Scanner) endHead() {
	h := &s.h
	idx := s.index
	s.index++
	if h.cl > 0 && h.te > 0 {
		s.flagged = idx
		s.stop() // the request is refused and the connection closed
		return
	}
	if h.bad || h.unknown {
		s.stop()
		return
	}
	switch {
	case h.te > 0 && h.http10:
		// net/http ignores Transfer-Encoding on HTTP/1.0: no body.
		s.st = stRequestLine
	case h.te > 0:
		if h.te != 1 || !h.chunked {
			s.stop() // net/http answers 501 and closes
			return
		}
		s.st = stChunkSize
	case h.cl > 0:
		if h.clBad {
			s.stop() // net/http answers 400 and closes
			return
		}
		s.st, s.remain = stBody, h.clN
		if h.clN == 0 {
			s.st = stRequestLine
		}
	default:
		s.st = stRequestLine
	}
}

// chunkSize reads "hex[;ext]" CRLF as net/http does.
func (s *Scanner) chunkSize(line []byte) {
	n, ok := ParseChunkSize(line)
	switch {
	case !ok:
		s.stop()
	case n == 0:
		s.st = stTrailer
	default:
		s.st, s.remain = stChunkData, n
	}
}

// ParseChunkSize parses a chunk-size line without its LF as net/http
// does: CR required at its end, no other CR, at most 16 hex digits.
func ParseChunkSize(line []byte) (uint64, bool) {
	if len(line) == 0 || bytes.IndexByte(line, '\r') != len(line)-1 {
		return 0, false
	}
	line = bytes.TrimRight(line[:len(line)-1], " \t")
	if i := bytes.IndexByte(line, ';'); i >= 0 {
		line = line[:i]
	}
	if len(line) == 0 || len(line) > 16 {
		return 0, false
	}
	var n uint64
	for _, c := range line {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		n = n<<4 | uint64(c)
	}
	return n, true
}

// ParseContentLength parses a decimal Content-Length as net/http does
// (strconv.ParseUint(v, 10, 63)), without allocating.
func ParseContentLength(v []byte) (uint64, bool) {
	if len(v) == 0 {
		return 0, false
	}
	var n uint64
	for _, c := range v {
		if c < '0' || c > '9' {
			return 0, false
		}
		if n > (1<<63-1-uint64(c-'0'))/10 {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}

// EqualFold reports whether b is lower, ASCII case folded (lower is in
// lower case).
func EqualFold(b []byte, lower string) bool {
	if len(b) != len(lower) {
		return false
	}
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}
