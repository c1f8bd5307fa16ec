package bridge

import (
	"net/http"
	"strconv"
	"strings"
	"testing"

	"github.com/eclipse/paho.golang/packets"
)

// refMatch is MQTT filter matching written the plain way (split both,
// compare level by level), to check topicMatch against.
func refMatch(filter, topic string) bool {
	f, t := strings.Split(filter, "/"), strings.Split(topic, "/")
	for i, part := range f {
		if part == "#" {
			return true
		}
		if i >= len(t) {
			return false
		}
		if part != "+" && part != t[i] {
			return false
		}
	}
	return len(f) == len(t)
}

func TestTopicMatch(t *testing.T) {
	for _, c := range []struct {
		filter, topic string
		want          bool
	}{
		{"replies/#", "replies/app1/x", true},
		{"replies/#", "replies", true}, // # includes the parent level
		{"replies/#", "repliesX/a", false},
		{"replies/#", "devices/d1/commands", false},
		{"replies/+", "replies/a", true},
		{"replies/+", "replies/a/b", false},
		{"replies/+", "replies", false},
		{"replies/+/r", "replies//r", true},
		{"a/b", "a/b", true},
		{"a/b", "a/b/", false},
		{"a/+/#", "a/x", true},
	} {
		if got := topicMatch(c.filter, c.topic); got != c.want {
			t.Errorf("topicMatch(%q, %q) = %v, want %v", c.filter, c.topic, got, c.want)
		}
	}
}

// FuzzTopicMatch: topicMatch agrees with the reference on valid filters,
// and a filter without wildcards matches exactly itself.
func FuzzTopicMatch(f *testing.F) {
	for _, s := range [][2]string{{"replies/#", "replies/a"}, {"a/+/c", "a/b/c"}, {"+", ""}, {"a/#", "a"}, {"#", "x/y"}, {"a//b", "a//b"}} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, filter, topic string) {
		if !validFilterForTest(filter) || strings.ContainsAny(topic, "+#") {
			return
		}
		got, want := topicMatch(filter, topic), refMatch(filter, topic)
		if got != want {
			t.Fatalf("topicMatch(%q, %q) = %v, reference %v", filter, topic, got, want)
		}
		if !strings.ContainsAny(filter, "+#") && got != (filter == topic) {
			t.Fatalf("literal filter %q vs %q: %v", filter, topic, got)
		}
	})
}

func validFilterForTest(f string) bool {
	levels := strings.Split(f, "/")
	for i, l := range levels {
		if strings.Contains(l, "#") && (l != "#" || i != len(levels)-1) {
			return false
		}
		if strings.Contains(l, "+") && l != "+" {
			return false
		}
	}
	return true
}

func TestAllowedResponseTopic(t *testing.T) {
	q := &requests{filters: []string{"replies/#", "apps/+/answers"}}
	for topic, want := range map[string]bool{
		"replies/app1": true, "apps/a1/answers": true,
		"devices/d2/commands": false, "apps/a1/answers/x": false,
		"replies/#": false, "replies/+": false, "replies/\x00": false, "": false,
	} {
		if got := q.allowed(topic); got != want {
			t.Errorf("allowed(%q) = %v, want %v", topic, got, want)
		}
	}
	if (&requests{}).allowed("replies/a") {
		t.Error("no filters must allow nothing")
	}
}

func TestBoundProps(t *testing.T) {
	var in []packets.User
	for i := range maxUserProps + 5 {
		in = append(in, packets.User{Key: "k" + strconv.Itoa(i), Value: "v"})
	}
	out, dropped := boundProps(in)
	if len(out) != maxUserProps || dropped != 5 {
		t.Fatalf("count bound: kept %d dropped %d, want %d and 5", len(out), dropped, maxUserProps)
	}
	out, dropped = boundProps([]packets.User{
		{Key: "a", Value: "1"},
		{Key: "a", Value: "2"}, // duplicate key: the first wins
		{Key: strings.Repeat("k", maxUserPropKey+1), Value: "x"},
		{Key: "big", Value: strings.Repeat("v", maxUserPropValue+1)},
		{Key: "", Value: "x"},
		{Key: "bad", Value: "\xff"},
		{Key: "edge", Value: strings.Repeat("v", maxUserPropValue)},
	})
	if len(out) != 2 || out[0] != (packets.User{Key: "a", Value: "1"}) || out[1].Key != "edge" || dropped != 5 {
		t.Fatalf("size bounds: kept %+v dropped %d", out, dropped)
	}
	h := http.Header{}
	setRequestHeaders(h, &command{req: &request{props: []packets.User{{Key: "a b", Value: "x=y&z"}}, contentType: "text/plain"}})
	if got := h.Values("X-User-Property"); len(got) != 1 || got[0] != "a+b=x%3Dy%26z" || h.Get("X-Response-Required") != "true" || h.Get("Content-Type") != "text/plain" {
		t.Errorf("headers: %v", h)
	}
}

func FuzzParseStatus(f *testing.F) {
	for _, s := range []string{"200", "504", "199", "600", "+200", "0200", " 200", "abc"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseStatus(s)
		if err != nil {
			return
		}
		if n < 200 || n > 599 || strconv.Itoa(n) != s {
			t.Fatalf("parseStatus(%q) = %d", s, n)
		}
	})
}

func TestMatchResponse(t *testing.T) {
	p, _ := compilePath("/devices/{device}/commands")
	if d, id, ok := p.matchResponse("/devices/d1/commands/ab-1/response"); !ok || d != "d1" || id != "ab-1" {
		t.Errorf("match: %q %q %v", d, id, ok)
	}
	for _, bad := range []string{"/devices/d1/commands/response", "/devices/d1/commands/ab-1/ack", "/devices/d1/commands//response"} {
		if _, _, ok := p.matchResponse(bad); ok {
			t.Errorf("%s matched", bad)
		}
	}
}
