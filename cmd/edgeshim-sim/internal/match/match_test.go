package match

import (
	"testing"
	"time"
)

type fakeClock struct{ t time.Time }

func (f *fakeClock) now() time.Time          { return f.t }
func (f *fakeClock) advance(d time.Duration) { f.t = f.t.Add(d) }

func TestDeliveredDuplicateLateLost(t *testing.T) {
	clk := &fakeClock{t: time.Unix(1000, 0)}
	m := New(clk.now, 2*time.Second, 0)
	m.Published("c1", "d1")
	m.Published("c2", "d2")
	m.Published("c3", "d3")
	m.Published("c4", "d4")
	m.Failed("c4") // the broker refused it: not counted as lost

	clk.advance(500 * time.Millisecond)
	if lat, first := m.Received("c1", "d1"); !first || lat != 500*time.Millisecond {
		t.Errorf("c1 = %v %v, want first receipt after 500ms", lat, first)
	}
	if _, first := m.Received("c1", "d1"); first {
		t.Error("second receipt of c1 reported as first")
	}
	clk.advance(3 * time.Second)
	if lat, _ := m.Received("c2", "d2"); lat != 3500*time.Millisecond {
		t.Errorf("c2 latency %v", lat)
	}
	m.Received("zz", "d1") // never published
	m.Received("c3", "d9") // someone else's command
	if c := m.Counts(); c.Pending != 1 || c.Lost != 0 {
		t.Errorf("before finish: %+v, want c3 pending", c)
	}
	c := m.Finish()
	want := Counts{Published: 3, Failed: 1, Delivered: 2, Duplicates: 1, Late: 1, Lost: 1, Unknown: 1, Misrouted: 1}
	if c != want {
		t.Errorf("counts = %+v\nwant     %+v", c, want)
	}
	if c.Published != c.Delivered+c.Lost+c.Expired {
		t.Errorf("published != delivered + lost + expired: %+v", c)
	}
}

func TestExpiredIsNotLost(t *testing.T) {
	clk := &fakeClock{t: time.Unix(0, 0)}
	m := New(clk.now, time.Second, 10*time.Second)
	m.Published("old", "d1")
	clk.advance(5 * time.Second)
	m.Published("young", "d1")
	clk.advance(6 * time.Second) // old is 11 s, young 6 s
	if c := m.Counts(); c.Expired != 1 || c.Pending != 1 {
		t.Errorf("counts %+v, want one expired, one pending", c)
	}
	c := m.Finish()
	if c.Expired != 1 || c.Lost != 1 {
		t.Errorf("finish %+v, want old expired, young lost", c)
	}
	m.Published("after", "d1")
	if m.Counts().Published != 2 {
		t.Error("Published after Finish counted")
	}
}

func TestFailedAfterReceiptStaysPublished(t *testing.T) {
	clk := &fakeClock{t: time.Unix(0, 0)}
	m := New(clk.now, time.Second, 0)
	m.Published("c", "d")
	m.Received("c", "d") // delivered before the PUBACK timed out
	m.Failed("c")
	if c := m.Finish(); c.Published != 1 || c.Delivered != 1 || c.Failed != 0 {
		t.Errorf("%+v", c)
	}
}
