//go:build linux

package park

import (
	"sync"
	"syscall"
)

// poller is one epoll instance and the goroutine waiting in it. Each
// socket is registered EPOLLIN|EPOLLRDHUP|EPOLLONESHOT with its handle's
// id (not its descriptor: a descriptor number is reused after a close, an
// id never), so one readiness disables it until the next Park re-arms it.
// The socket stays in the runtime's own netpoller as well, where the
// callback's reads wait for the rest of a frame.
type poller struct {
	p    *Parker
	epfd int
	wake [2]int // pipe: a byte on it stops the waiting goroutine
	done chan struct{}
	once sync.Once
}

const wakeID = 0 // handle ids start at 1

func newPoller(p *Parker) (*poller, error) {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, err
	}
	pl := &poller{p: p, epfd: epfd, done: make(chan struct{})}
	if err := syscall.Pipe2(pl.wake[:], syscall.O_CLOEXEC|syscall.O_NONBLOCK); err != nil {
		syscall.Close(epfd)
		return nil, err
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN}
	setID(&ev, wakeID)
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, pl.wake[0], &ev); err != nil {
		syscall.Close(epfd)
		syscall.Close(pl.wake[0])
		syscall.Close(pl.wake[1])
		return nil, err
	}
	go pl.loop()
	return pl, nil
}

func setID(ev *syscall.EpollEvent, id uint64) {
	ev.Fd = int32(uint32(id))
	ev.Pad = int32(uint32(id >> 32))
}

func getID(ev *syscall.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}

// loop waits for readiness and wakes the handles. EpollWait blocks its
// thread (the runtime hands the P to another thread), which is one thread
// for all parked sockets.
func (pl *poller) loop() {
	defer close(pl.done)
	events := make([]syscall.EpollEvent, 256)
	for {
		n, err := syscall.EpollWait(pl.epfd, events, -1)
		if err != nil {
			if err == syscall.EINTR {
				continue
			}
			return // EBADF and the like: nothing left to wait for
		}
		for i := range events[:n] {
			id := getID(&events[i])
			if id == wakeID {
				return
			}
			pl.p.wake(id)
		}
	}
}

// arm watches h's socket for one readiness. The descriptor is used only
// inside RawConn.Control, where it cannot be closed (and reused) under us;
// a closed connection fails here.
func (pl *poller) arm(h *Handle) error {
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT}
	setID(&ev, h.id)
	var cerr error
	err := h.rc.Control(func(fd uintptr) {
		op := syscall.EPOLL_CTL_MOD
		if !h.added.Swap(true) {
			op = syscall.EPOLL_CTL_ADD
		}
		cerr = syscall.EpollCtl(pl.epfd, op, int(fd), &ev)
	})
	if err != nil {
		return err
	}
	return cerr
}

// disarm removes h's socket, before its connection is closed or after (a
// closed socket left the epoll set with its last descriptor).
func (pl *poller) disarm(h *Handle) {
	h.rc.Control(func(fd uintptr) {
		syscall.EpollCtl(pl.epfd, syscall.EPOLL_CTL_DEL, int(fd), nil)
	})
}

// close stops the waiting goroutine and closes the epoll instance.
func (pl *poller) close() error {
	var err error
	pl.once.Do(func() {
		_, err = syscall.Write(pl.wake[1], []byte{1})
		<-pl.done
		syscall.Close(pl.epfd)
		syscall.Close(pl.wake[0])
		syscall.Close(pl.wake[1])
	})
	return err
}
