package bridge

import (
	"strings"
	"testing"
)

func TestPathTemplate(t *testing.T) {
	for _, tc := range []struct {
		tmpl, path, device string
		ok                 bool
	}{
		{"/devices/{device}/commands", "/devices/d1/commands", "d1", true},
		{"/devices/{device}/commands", "/devices//commands", "", false},
		{"/devices/{device}/commands", "/devices/a/b/commands", "", false},
		{"/devices/{device}/commands", "/devices/d1/commandsX", "", false},
		{"/devices/{device}", "/devices/door-17", "door-17", true},
		{"/api/updates", "/api/updates", "", true},
		{"/api/updates", "/api/updates/x", "", false},
		{"/devices/{device}/commands", "/devices/d+#/commands", "d+#", true}, // matched, then refused as 400
	} {
		pt, err := compilePath(tc.tmpl)
		if err != nil {
			t.Fatalf("%s: %v", tc.tmpl, err)
		}
		d, ok := pt.match(tc.path)
		if d != tc.device || ok != tc.ok {
			t.Errorf("%s ~ %s = %q %v, want %q %v", tc.tmpl, tc.path, d, ok, tc.device, tc.ok)
		}
	}
	pt, _ := compilePath("/devices/{device}/commands")
	if d, id, ok := pt.matchAck("/devices/d1/commands/c-7/ack"); !ok || d != "d1" || id != "c-7" {
		t.Errorf("ack = %q %q %v", d, id, ok)
	}
	for _, bad := range []string{"devices/{device}", "/d{device}/x", "/{device}x", "/{device}/{device}"} {
		if _, err := compilePath(bad); err == nil {
			t.Errorf("%q compiled", bad)
		}
	}
}

func TestValidDeviceID(t *testing.T) {
	for _, id := range []string{"d1", "door-17", "a.b_c:d", strings.Repeat("x", 128)} {
		if !ValidDeviceID(id) {
			t.Errorf("%q refused", id)
		}
	}
	for _, id := range []string{"", "a/b", "a+b", "a#", "a b", "é", strings.Repeat("x", 129), "a\x00"} {
		if ValidDeviceID(id) {
			t.Errorf("%q accepted", id)
		}
	}
}

// FuzzPathTemplate: matching never panics, and whatever it extracts either
// fails ValidDeviceID or is safe to put in a topic level.
func FuzzPathTemplate(f *testing.F) {
	f.Add("/devices/{device}/commands", "/devices/d1/commands")
	f.Add("/api/{device}", "/api/../x")
	f.Fuzz(func(t *testing.T, tmpl, path string) {
		pt, err := compilePath(tmpl)
		if err != nil {
			return
		}
		d, ok := pt.match(path)
		if ok && ValidDeviceID(d) && strings.ContainsAny(d, "/+#\x00") {
			t.Fatalf("unsafe device %q accepted", d)
		}
		pt.matchAck(path)
	})
}
