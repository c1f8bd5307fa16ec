package grip

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

const tmpl = "/devices/{device}/commands"

func TestParsePoll(t *testing.T) {
	for _, c := range []struct {
		path, query string
		dev         string
		wait        int
		ok          bool
	}{
		{"/devices/sim-1/commands", "", "sim-1", 0, true},
		{"/devices/a.b_C-9/commands", "wait=55", "a.b_C-9", 55, true},
		{"/devices/x/commands", "wait=300", "x", 300, true},
		{"/devices//commands", "", "", 0, false},
		{"/devices/a/b/commands", "", "", 0, false},
		{"/devices/a%2F/commands", "", "", 0, false},
		{"/devices/" + strings.Repeat("a", 129) + "/commands", "", "", 0, false},
		{"/devices/a/telemetry", "", "", 0, false},
		{"/devices/commands", "", "", 0, false},
		{"/devices/a/commands", "wait=301", "", 0, false},
		{"/devices/a/commands", "wait=-1", "", 0, false},
		{"/devices/a/commands", "wait=07", "", 0, false},
		{"/devices/a/commands", "wait=1&wait=2", "", 0, false},
		{"/devices/a/commands", "wait=%zz", "", 0, false},
	} {
		dev, wait, err := ParsePoll(tmpl, c.path, c.query)
		if c.ok != (err == nil) || dev != c.dev || wait != c.wait {
			t.Errorf("ParsePoll(%q, %q) = %q, %d, %v; want %q, %d, ok=%v", c.path, c.query, dev, wait, err, c.dev, c.wait, c.ok)
		}
		if err != nil && !errors.Is(err, ErrBadPoll) {
			t.Errorf("ParsePoll(%q, %q): %v is not ErrBadPoll", c.path, c.query, err)
		}
	}
}

func FuzzParsePoll(f *testing.F) {
	f.Add("/devices/sim-1/commands", "wait=55")
	f.Add("/devices//commands", "wait=1&wait=2")
	f.Add("/devices/ä/commands", "wait=%zz")
	f.Fuzz(func(t *testing.T, path, query string) {
		dev, wait, err := ParsePoll(tmpl, path, query)
		if err != nil {
			return
		}
		if path != "/devices/"+dev+"/commands" || dev == "" || len(dev) > maxDeviceLen || strings.ContainsAny(dev, "/?%{} \r\n") {
			t.Fatalf("accepted device %q from %q", dev, path)
		}
		if wait < 0 || wait > MaxWait {
			t.Fatalf("accepted wait %d", wait)
		}
	})
}

func TestPublishBody(t *testing.T) {
	got, err := PublishBody("d-sim-1", []byte(`simcmd:ab-1;"x"`))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"items":[{"channel":"d-sim-1","formats":{"http-response":{"code":200,"body":"simcmd:ab-1;\"x\""}}}]}`
	if string(got) != want {
		t.Errorf("PublishBody =\n%s\nwant\n%s", got, want)
	}
	bin := []byte{0xff, 0x00, 'a'}
	got, _ = PublishBody("d-2", bin)
	var v struct {
		Items []publishItem `json:"items"`
	}
	if err := json.Unmarshal(got, &v); err != nil || len(v.Items) != 1 {
		t.Fatalf("binary body: %s: %v", got, err)
	}
	if r := v.Items[0].Formats.HTTPResponse; r.Body != "" || r.BodyBin != base64.StdEncoding.EncodeToString(bin) {
		t.Errorf("binary payload not sent as body-bin: %s", got)
	}
}

// TestOriginHolds: a poll with a wait is answered with a GRIP hold on the
// device's channel for that wait; a check-in without a wait at once; a
// request that is not a poll is refused and counted.
func TestOriginHolds(t *testing.T) {
	o, err := NewOrigin(tmpl, "d-{device}")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(o)
	defer srv.Close()
	get := func(method, path string) *http.Response {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, nil)
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp
	}
	r := get("GET", "/devices/sim-7/commands?wait=55")
	if r.StatusCode != 200 || r.Header.Get("Grip-Hold") != "response" || r.Header.Get("Grip-Channel") != "d-sim-7" ||
		r.Header.Get("Grip-Timeout") != "55" || r.ContentLength != 0 {
		t.Errorf("held poll: %d %v", r.StatusCode, r.Header)
	}
	r = get("GET", "/devices/sim-7/commands")
	if r.StatusCode != 200 || r.Header.Get("Grip-Hold") != "" {
		t.Errorf("check-in: %d %v", r.StatusCode, r.Header)
	}
	if r = get("POST", "/devices/sim-7/commands?wait=5"); r.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d", r.StatusCode)
	}
	if r = get("GET", "/devices/a$b/commands?wait=5"); r.StatusCode != http.StatusNotFound || r.Header.Get("Grip-Hold") != "" {
		t.Errorf("bad device id: %d %v", r.StatusCode, r.Header)
	}
	if holds, bad := o.Counts(); holds != 1 || bad != 2 {
		t.Errorf("counts: %d holds, %d bad; want 1, 2", holds, bad)
	}
	if _, err := NewOrigin("/devices/commands", "d-{device}"); err == nil {
		t.Error("NewOrigin accepted a path without {device}")
	}
}
