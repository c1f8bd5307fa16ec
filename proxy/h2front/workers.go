package h2front

import (
	"sync"
	"time"
)

// Handler goroutines are reused. A goroutine starts with a small stack
// and a proxy handler chain needs more: growing it (newstack, copystack)
// and freeing it again at the goroutine's exit cost about 7 % of the CPU
// under h2load. A worker grows its stack once and serves stream after
// stream. An idle worker waits on its own channel in a LIFO list (the
// most recently used first: its stack is warm); handing it a stream is a
// lock and a channel send, cheaper than starting a goroutine. The
// Server's reaper ends workers idle for longer than workerIdle; Close
// ends them all.

// workerIdle is how long a worker may stay idle.
const workerIdle = 10 * time.Second

// maxIdleWorkers bounds the idle workers (16 KiB of stack each).
const maxIdleWorkers = 1024

type job struct {
	c  *conn
	st *stream
}

type worker struct {
	ch   chan job // a zero job: end
	idle time.Time
}

type workers struct {
	mu      sync.Mutex
	idle    []*worker // LIFO
	closed  bool
	reaping bool
	quit    chan struct{}
	wg      sync.WaitGroup
	now     func() time.Time

	started int // workers started (tests)
}

// run serves j on an idle worker, else on a new one.
func (w *workers) run(j job) {
	w.mu.Lock()
	if n := len(w.idle); n > 0 {
		wk := w.idle[n-1]
		w.idle[n-1] = nil
		w.idle = w.idle[:n-1]
		w.mu.Unlock()
		wk.ch <- j
		return
	}
	if w.closed {
		w.mu.Unlock()
		go j.c.runStream(j.st) // not kept
		return
	}
	w.started++
	w.wg.Add(1)
	if !w.reaping {
		w.reaping = true
		w.quit = make(chan struct{})
		w.wg.Add(1)
		go w.reap(w.quit)
	}
	w.mu.Unlock()
	go w.work(j)
}

func (w *workers) work(j job) {
	defer w.wg.Done()
	growStack()
	wk := &worker{ch: make(chan job, 1)}
	for {
		j.c.runStream(j.st)
		w.mu.Lock()
		if w.closed || len(w.idle) >= maxIdleWorkers {
			w.mu.Unlock()
			return
		}
		wk.idle = w.now()
		w.idle = append(w.idle, wk)
		w.mu.Unlock()
		if j = <-wk.ch; j.c == nil {
			return
		}
	}
}

// reap ends the workers idle for longer than workerIdle, every
// workerIdle, until quit; it ends with the last worker.
func (w *workers) reap(quit chan struct{}) {
	defer w.wg.Done()
	t := time.NewTicker(workerIdle)
	defer t.Stop()
	for {
		select {
		case <-quit:
			return
		case <-t.C:
		}
		cut := w.now().Add(-workerIdle)
		w.mu.Lock()
		// The oldest idle are at the bottom of the LIFO.
		n := 0
		for n < len(w.idle) && w.idle[n].idle.Before(cut) {
			w.idle[n].ch <- job{}
			n++
		}
		w.idle = append(w.idle[:0], w.idle[n:]...)
		w.mu.Unlock()
	}
}

// close ends the idle workers and the reaper and waits for every worker
// (busy ones end after their stream).
func (w *workers) close() {
	w.mu.Lock()
	w.closed = true
	for _, wk := range w.idle {
		wk.ch <- job{}
	}
	w.idle = nil
	if w.reaping {
		close(w.quit)
		w.reaping = false
	}
	w.mu.Unlock()
	w.wg.Wait()
}

func (w *workers) startedN() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.started
}

func (w *workers) idleN() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.idle)
}
