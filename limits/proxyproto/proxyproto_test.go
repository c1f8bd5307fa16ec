package proxyproto

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"
	"testing/iotest"
)

var (
	src4 = netip.MustParseAddrPort("203.0.113.7:51000")
	dst4 = netip.MustParseAddrPort("10.0.0.1:8443")
	src6 = netip.MustParseAddrPort("[2001:db8::7]:51000")
	dst6 = netip.MustParseAddrPort("[2001:db8::1]:8443")
)

// TestReadValid: v1 and v2, IPv4 and IPv6, LOCAL and UNKNOWN, read one
// byte at a time too; the bytes after a v1 header are returned, and a v2
// header is read exactly.
func TestReadValid(t *testing.T) {
	tlv := []byte{0xEA, 0, 3, 'v', 'p', 'c'}
	cases := []struct {
		name  string
		in    []byte
		want  Header
		local bool
	}{
		{"v1 tcp4", AppendV1(nil, src4, dst4), Header{Version: 1, Source: src4, Dest: dst4}, false},
		{"v1 tcp6", AppendV1(nil, src6, dst6), Header{Version: 1, Source: src6, Dest: dst6}, false},
		{"v1 unknown", []byte("PROXY UNKNOWN\r\n"), Header{Version: 1, Local: true}, true},
		{"v1 unknown with addresses", []byte("PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"), Header{Version: 1, Local: true}, true},
		{"v2 tcp4", AppendV2(nil, false, src4, dst4, nil), Header{Version: 2, Source: src4, Dest: dst4}, false},
		{"v2 tcp6 tlv", AppendV2(nil, false, src6, dst6, tlv), Header{Version: 2, Source: src6, Dest: dst6}, false},
		{"v2 local", AppendV2(nil, true, src4, dst4, nil), Header{Version: 2, Local: true}, true},
	}
	for _, c := range cases {
		for _, oneByte := range []bool{false, true} {
			in := append(append([]byte(nil), c.in...), "\x16\x03\x01rest"...)
			var r io.Reader = bytes.NewReader(in)
			if oneByte {
				r = iotest.OneByteReader(r)
			}
			h, rest, err := Read(r)
			if err != nil {
				t.Fatalf("%s: %v", c.name, err)
			}
			if h != c.want {
				t.Errorf("%s: got %+v, want %+v", c.name, h, c.want)
			}
			left, _ := io.ReadAll(r)
			if got := string(rest) + string(left); got != "\x16\x03\x01rest" {
				t.Errorf("%s: after the header %q, want the stream's rest", c.name, got)
			}
			if c.want.Version == 2 && len(rest) != 0 {
				t.Errorf("%s: v2 read past its header (%q)", c.name, rest)
			}
		}
	}
}

// TestReadRefused: each bad header fails with its own error, and a stream
// without a header hands back what was read.
func TestReadRefused(t *testing.T) {
	big := AppendV2(nil, false, src4, dst4, nil)
	binary.BigEndian.PutUint16(big[14:16], MaxV2Payload+1)
	v2 := func(verCmd, fam byte, payload []byte) []byte {
		b := append([]byte(nil), sigV2...)
		b = append(b, verCmd, fam)
		b = binary.BigEndian.AppendUint16(b, uint16(len(payload)))
		return append(b, payload...)
	}
	cases := []struct {
		name string
		in   string
		want error
	}{
		{"tls", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", ErrNoHeader},
		{"http", "POST / HTTP/1.1\r\n", ErrNoHeader},
		{"almost v1", "PROXX TCP4", ErrNoHeader},
		{"v1 truncated", "PROXY TCP4 1.2.3.4", ErrTruncated},
		{"v1 oversized", "PROXY TCP4 " + strings.Repeat("1", 200), ErrOversized},
		{"v1 bad protocol", "PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n", ErrMalformed},
		{"v1 v6 in tcp4", "PROXY TCP4 ::1 ::1 1 2\r\n", ErrMalformed},
		{"v1 v4 in tcp6", "PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n", ErrMalformed},
		{"v1 zone", "PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", ErrMalformed},
		{"v1 leading zero ip", "PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", ErrMalformed},
		{"v1 leading zero port", "PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", ErrMalformed},
		{"v1 port range", "PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", ErrMalformed},
		{"v1 sign", "PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", ErrMalformed},
		{"v1 double space", "PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", ErrMalformed},
		{"v1 extra field", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n", ErrMalformed},
		{"v1 LF only", "PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", ErrMalformed},
		{"v1 CR alone", "PROXY TCP4 1.2.3.4\r5.6.7.8 1 2\r\n", ErrMalformed},
		{"v2 truncated fixed", string(sigV2) + "\x21", ErrTruncated},
		{"v2 truncated payload", string(AppendV2(nil, false, src4, dst4, nil)[:20]), ErrTruncated},
		{"v2 oversized", string(big), ErrOversized},
		{"v2 version 1", string(v2(0x11, famTCP4, make([]byte, 12))), ErrMalformed},
		{"v2 command 2", string(v2(0x22, famTCP4, make([]byte, 12))), ErrMalformed},
		{"v2 udp", string(v2(0x21, 0x12, make([]byte, 12))), ErrMalformed},
		{"v2 short addresses", string(v2(0x21, famTCP6, make([]byte, 12))), ErrMalformed},
		{"v2 tlv overrun", string(v2(0x21, famTCP4, append(make([]byte, 12), 0xEA, 0, 9, 1))), ErrMalformed},
		{"v2 tlv stub", string(v2(0x21, famTCP4, append(make([]byte, 12), 0xEA))), ErrMalformed},
	}
	for _, c := range cases {
		_, rest, err := Read(iotest.OneByteReader(strings.NewReader(c.in)))
		if !errors.Is(err, c.want) {
			t.Errorf("%s: err %v, want %v", c.name, err, c.want)
		}
		if c.want == ErrNoHeader && !strings.HasPrefix(c.in, string(rest)) {
			t.Errorf("%s: rest %q is not what was read", c.name, rest)
		}
	}
	if _, _, err := Read(strings.NewReader("")); err != io.EOF {
		t.Errorf("empty stream: %v, want io.EOF", err)
	}
	timeout := iotest.ErrTimeout
	if _, _, err := Read(iotest.TimeoutReader(strings.NewReader("P"))); !errors.Is(err, timeout) {
		t.Errorf("stalled stream: %v, want the read error", err)
	}
}

// FuzzRead: no input panics, reads more than MaxV1 bytes before the end
// of a v1 header, or reads past a v2 header; whatever parses round-trips
// through the encoder to the same header.
func FuzzRead(f *testing.F) {
	f.Add(AppendV1(nil, src4, dst4))
	f.Add(AppendV1(nil, src6, dst6))
	f.Add(AppendV2(nil, false, src4, dst4, []byte{1, 0, 1, 'x'}))
	f.Add(AppendV2(nil, true, src4, dst4, nil))
	f.Add([]byte("PROXY UNKNOWN\r\n"))
	f.Add([]byte("\x16\x03\x01\x00"))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := &countReader{r: bytes.NewReader(in)}
		h, rest, err := Read(r)
		if r.n > MaxV1 && !(len(in) > 12 && bytes.Equal(in[:12], sigV2)) {
			t.Fatalf("read %d bytes, more than a v1 header", r.n)
		}
		if err != nil {
			return
		}
		if h.Version == 2 && len(rest) != 0 {
			t.Fatalf("v2 returned %d bytes past its header", len(rest))
		}
		if h.Local {
			return
		}
		var enc []byte
		if h.Version == 1 {
			enc = AppendV1(nil, h.Source, h.Dest)
		} else {
			enc = AppendV2(nil, false, h.Source, h.Dest, nil)
		}
		h2, _, err := Read(bytes.NewReader(enc))
		if err != nil || h2 != h {
			t.Fatalf("round trip of %+v: %+v, %v", h, h2, err)
		}
	})
}

type countReader struct {
	r io.Reader
	n int
}

func (c *countReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

// BenchmarkRead parses a v1 and a v2 header from memory.
func BenchmarkRead(b *testing.B) {
	for name, hdr := range map[string][]byte{"v1": AppendV1(nil, src4, dst4), "v2": AppendV2(nil, false, src6, dst6, nil)} {
		b.Run(name, func(b *testing.B) {
			r := bytes.NewReader(hdr)
			b.ReportAllocs()
			for b.Loop() {
				r.Reset(hdr)
				if _, _, err := Read(r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
