package limits

import (
	"bufio"
	"compress/flate"
	"compress/gzip"
	"compress/zlib"
	"errors"
	"io"
	"net/http"
	"strings"
)

// ErrDecompressedTooLarge is returned while reading a decoded body that
// passes the decompressed size or ratio cap (a decompression bomb).
var ErrDecompressedTooLarge = errors.New("decompressed body too large")

// IsTooLarge reports whether err comes from a body or decompression limit
// (the handler answers 413).
func IsTooLarge(err error) bool {
	var mbe *http.MaxBytesError
	return errors.As(err, &mbe) || errors.Is(err, ErrDecompressedTooLarge)
}

// Decompress decodes gzip and deflate request bodies for next, which then
// sees a plain body without Content-Encoding. The decoded size is capped by
// maxOut and by maxRatio × the compressed bytes read so far; past either,
// reads fail with ErrDecompressedTooLarge. Other encodings are 415.
func Decompress(maxOut int64, maxRatio float64, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		enc := strings.ToLower(strings.TrimSpace(r.Header.Get("Content-Encoding")))
		if enc == "" || enc == "identity" || r.Body == nil || r.Body == http.NoBody {
			next.ServeHTTP(w, r)
			return
		}
		cr := &countingReader{r: r.Body}
		var dec io.ReadCloser
		switch enc {
		case "gzip", "x-gzip":
			zr, err := gzip.NewReader(cr)
			if err != nil {
				WriteError(w, http.StatusBadRequest, "bad gzip body")
				return
			}
			dec = zr
		case "deflate":
			dec = newDeflateReader(cr)
		default:
			WriteError(w, http.StatusUnsupportedMediaType, "unsupported Content-Encoding")
			return
		}
		r.Body = &boundedDecoder{dec: dec, src: r.Body, in: cr, maxOut: maxOut, ratio: maxRatio}
		r.Header.Del("Content-Encoding")
		r.Header.Del("Content-Length")
		r.ContentLength = -1
		next.ServeHTTP(w, r)
	})
}

// newDeflateReader decodes "deflate" as RFC 9110 defines it, the zlib
// format (RFC 1950), and also the raw DEFLATE stream (RFC 1951) that some
// clients send under that name; the two are told apart by zlib's header
// check, which a raw stream passes only by chance (1 in 31 × 8).
func newDeflateReader(r io.Reader) io.ReadCloser {
	br := bufio.NewReaderSize(r, 512)
	if h, err := br.Peek(2); err == nil && h[0]&0x0f == 8 && h[0]>>4 <= 7 && (uint16(h[0])<<8|uint16(h[1]))%31 == 0 {
		return &lazyZlib{br: br}
	}
	return flate.NewReader(br)
}

// lazyZlib opens the zlib stream at the first Read, so that a bad header
// is a read error like any other corrupt body.
type lazyZlib struct {
	br *bufio.Reader
	zr io.ReadCloser
}

func (z *lazyZlib) Read(p []byte) (int, error) {
	if z.zr == nil {
		zr, err := zlib.NewReader(z.br)
		if err != nil {
			return 0, err
		}
		z.zr = zr
	}
	return z.zr.Read(p)
}

func (z *lazyZlib) Close() error {
	if z.zr == nil {
		return nil
	}
	return z.zr.Close()
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

type boundedDecoder struct {
	dec    io.ReadCloser
	src    io.Closer
	in     *countingReader
	out    int64
	maxOut int64
	ratio  float64
}

func (b *boundedDecoder) Read(p []byte) (int, error) {
	n, err := b.dec.Read(p)
	b.out += int64(n)
	// 64 KiB of slack before the ratio applies: tiny bodies compress well.
	if b.out > b.maxOut || (b.out > 64<<10 && float64(b.out) > b.ratio*float64(max(b.in.n, 1))) {
		return 0, ErrDecompressedTooLarge
	}
	return n, err
}

func (b *boundedDecoder) Close() error {
	b.dec.Close()
	return b.src.Close()
}
