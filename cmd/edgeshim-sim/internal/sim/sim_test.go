package sim

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/edgeshim/edgeshim/cmd/edgeshim-sim/internal/scenario"
	"go.uber.org/goleak"
)

// queuePublisher is a fake of our Publisher: commands go to per-device
// queues that the test server answers polls from.
type queuePublisher struct {
	mu sync.Mutex
	q  map[string]chan []byte
}

func (p *queuePublisher) queue(dev string) chan []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.q[dev] == nil {
		p.q[dev] = make(chan []byte, 1000)
	}
	return p.q[dev]
}

func (p *queuePublisher) Publish(_ context.Context, topic string, payload []byte, _ time.Duration) error {
	dev := strings.Split(topic, "/")[1]
	p.queue(dev) <- payload
	return nil
}

func (p *queuePublisher) Close() error { return nil }

var _ Publisher = (*queuePublisher)(nil)

// TestRunMatchesCommandsThroughAStorm: long-polling devices against a TLS
// poll endpoint, commands through the fake publisher, a storm in the
// middle: every command is delivered once, the devices reconnect (and
// resume TLS), the storm's recovery is measured, and no goroutine is left.
func TestRunMatchesCommandsThroughAStorm(t *testing.T) {
	defer goleak.VerifyNone(t)
	pub := &queuePublisher{q: map[string]chan []byte{}}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		dev := strings.Split(r.URL.Path, "/")[2]
		wait, _ := strconv.Atoi(r.URL.Query().Get("wait"))
		t := time.NewTimer(time.Duration(wait) * time.Second)
		defer t.Stop()
		select {
		case c := <-pub.queue(dev):
			w.Write(c)
		case <-t.C:
			w.WriteHeader(http.StatusNoContent)
		case <-r.Context().Done():
		}
	}))
	srv.StartTLS()
	defer srv.Close()

	s := &scenario.Scenario{}
	s.Target.URL = srv.URL + "/devices/{device}/commands"
	s.Devices.Count = 10
	s.Devices.Model = scenario.ModelLongPoll
	s.Devices.Wait = 1
	s.Duration = 4 * time.Second
	s.Drain = 2 * time.Second
	s.Commands.Broker = "mqtt://unused:1883" // the fake publisher is used
	// Commands after the storm: this test server, unlike edgeshim, loses a
	// command taken by a poll whose connection the storm closes.
	s.Commands.Rate = 40
	s.Commands.Start = 1500 * time.Millisecond
	s.Commands.Stop = 3500 * time.Millisecond
	s.Events = []scenario.Event{{At: time.Second, Storm: &scenario.Storm{}}}
	s.WithDefaults()
	if err := s.Validate(); err != nil {
		t.Fatal(err)
	}
	rep, err := Run(context.Background(), s, Options{Publisher: pub})
	if err != nil {
		t.Fatal(err)
	}
	c := rep.Commands
	if c.Published < 40 || c.Delivered != c.Published || c.Lost != 0 || c.Duplicates != 0 {
		t.Errorf("commands %+v: want all of about 80 delivered once", c)
	}
	if rep.Latency.Deliver.Count != uint64(c.Delivered) {
		t.Errorf("deliver histogram %d samples, %d delivered", rep.Latency.Deliver.Count, c.Delivered)
	}
	if rep.Handshakes < 2*int64(s.Devices.Count) || rep.Resumed == 0 {
		t.Errorf("handshakes %d resumed %d: every device should reconnect after the storm, resuming", rep.Handshakes, rep.Resumed)
	}
	if len(rep.Events) != 1 || rep.Events[0].Kind != "storm" || rep.Events[0].RecoveredAfterS < 0 {
		t.Errorf("events %+v: want a storm the fleet recovered from", rep.Events)
	}
	if rep.OnlineAtEnd != int64(s.Devices.Count) || rep.Failures != 0 {
		t.Errorf("online %d, failures %d (%v)", rep.OnlineAtEnd, rep.Failures, rep.Refusals)
	}
}

func TestScanIDs(t *testing.T) {
	var got []string
	scanIDs([]byte(`[{"id":"7","payload":"simcmd:ab-1;xxxx"},{"payload":"simcmd:ab-2;"}] simcmd:no-end`), func(id string) { got = append(got, id) })
	if strings.Join(got, ",") != "ab-1,ab-2" {
		t.Errorf("ids %v", got)
	}
}

func TestScrapeAndErrorClass(t *testing.T) {
	v := scrape(strings.NewReader("# HELP x\nprocess_cpu_seconds_total 12.5\nprocess_resident_memory_bytes 1.048576e+06\nprocess_cpu_seconds_total_other 3\n"),
		"process_cpu_seconds_total", "process_resident_memory_bytes")
	if v[0] != 12.5 || v[1] != 1<<20 {
		t.Errorf("scrape = %v", v)
	}
	for err, want := range map[error]string{
		&os.SyscallError{Syscall: "connect", Err: syscall.ECONNREFUSED}: "refused",
		&os.SyscallError{Syscall: "read", Err: syscall.ECONNRESET}:      "reset",
		os.ErrDeadlineExceeded:  "timeout",
		io.ErrUnexpectedEOF:     "eof",
		errors.New("something"): "other",
	} {
		if got := errorClass(err); got != want {
			t.Errorf("errorClass(%v) = %s, want %s", err, got, want)
		}
	}
}
