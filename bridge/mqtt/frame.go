package mqtt

import (
	"bytes"
	"fmt"
	"io"
	"sync"

	"github.com/eclipse/paho.golang/packets"
)

// MaxRemaining is the largest remaining length MQTT can encode: a packet
// is at most this plus its 5-byte fixed header.
const MaxRemaining = 268435455

// readSize is the buffer a read pass reads into; a larger packet gets a
// buffer of its own size once its fixed header is read.
const readSize = 4096

// readBufs holds the read buffers of connections between passes: an idle
// connection holds none.
var readBufs = sync.Pool{New: func() any { return new([readSize]byte) }}

// frameReader assembles MQTT packets from reads that may end anywhere,
// with a bounded size: the fixed header is parsed before the rest is
// read, so a packet over max is refused without reading or allocating
// it. Between reads it keeps a partial packet's bytes, and nothing else:
// a reader can park (release) with half a packet read and go on later.
type frameReader struct {
	max    int
	buf    []byte // buf[off:] is read and not yet consumed
	off    int
	pooled *[readSize]byte // buf's array when it is a pooled one
}

// next returns the next complete packet read, nil when there is none yet
// (fill reads more), or an error for a packet over max or malformed.
func (f *frameReader) next() (*packets.ControlPacket, error) {
	b := f.buf[f.off:]
	hl, rl, err := fixedHeader(b)
	if err != nil || hl == 0 {
		return nil, err
	}
	if hl+rl > f.max {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, hl+rl, f.max)
	}
	if len(b) < hl+rl {
		return nil, nil
	}
	pkt, err := packets.ReadPacket(bytes.NewReader(b[:hl+rl]))
	if err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, fmt.Errorf("%w: malformed %d-byte packet: %w", ErrProtocol, hl+rl, err)
	}
	f.off += hl + rl
	return pkt, nil
}

// fill reads once from r into the buffer's free space: a readSize
// buffer, or one that holds the whole of a larger packet whose header is
// read. It returns r's error only when nothing was read.
func (f *frameReader) fill(r io.Reader) error {
	part := f.buf[f.off:]
	need := 1
	if hl, rl, _ := fixedHeader(part); hl > 0 && hl+rl <= f.max {
		need = hl + rl - len(part)
	}
	size := max(readSize, len(part)+need)
	switch {
	case size == readSize && f.pooled == nil:
		p := readBufs.Get().(*[readSize]byte)
		f.buf = append(p[:0], part...)
		f.pooled = p
	case size <= cap(f.buf):
		f.buf = append(f.buf[:0], part...) // compact in place
	default:
		nb := make([]byte, len(part), size)
		copy(nb, part)
		f.putPooled()
		f.buf = nb
	}
	f.off = 0
	n, err := r.Read(f.buf[len(f.buf):cap(f.buf)])
	f.buf = f.buf[:len(f.buf)+n]
	if n > 0 {
		return nil
	}
	return err
}

// release is called before the reader parks: a connection holds no read
// buffer between packets, and no larger one than its partial packet.
func (f *frameReader) release() {
	part := f.buf[f.off:]
	if len(part) == 0 {
		f.drop()
		return
	}
	if f.pooled != nil {
		// A few bytes of a packet: keep those, not the pooled buffer.
		f.buf, f.off = bytes.Clone(part), 0
		f.putPooled()
	}
}

// drop releases everything: the connection ended.
func (f *frameReader) drop() {
	f.putPooled()
	f.buf, f.off = nil, 0
}

func (f *frameReader) putPooled() {
	if f.pooled != nil {
		readBufs.Put(f.pooled)
		f.pooled = nil
	}
}

// fixedHeader parses an MQTT fixed header at the start of b: its length
// (0 when b does not hold all of it yet) and the remaining length.
func fixedHeader(b []byte) (hdrLen, remaining int, err error) {
	if len(b) < 2 {
		return 0, 0, nil
	}
	if t := b[0] >> 4; t == 0 {
		return 0, 0, fmt.Errorf("%w: packet type 0", ErrProtocol)
	}
	mult := 1
	for i := 1; i < len(b); i++ {
		remaining += int(b[i]&0x7f) * mult
		if b[i]&0x80 == 0 {
			return i + 1, remaining, nil
		}
		if i == 4 {
			return 0, 0, fmt.Errorf("%w: remaining length over 4 bytes", ErrProtocol)
		}
		mult *= 128
	}
	return 0, 0, nil
}
