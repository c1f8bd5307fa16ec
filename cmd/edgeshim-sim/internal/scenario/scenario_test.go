package scenario

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseDefaultsAndFields(t *testing.T) {
	s, err := Parse([]byte(`
target: {url: "https://127.0.0.1:9443/api/{device}/updates"}
devices: {count: 20, model: longpoll, tls: {version: "1.2"}, sources: 4}
duration: 30s
commands: {broker: "mqtt://127.0.0.1:1883", rate: 5, late: 2s}
events:
  - {at: 10s, restart: "true"}
  - {at: 20s, storm: {obey_retry_after: false}}
`))
	if err != nil {
		t.Fatal(err)
	}
	if s.Devices.Wait != 55 || s.Devices.Count != 20 || *s.Devices.Sources != 4 || s.Commands.Stop != 30*time.Second {
		t.Errorf("defaults/fields: %+v", s.Devices)
	}
	if s.Target.WSURL != "wss://127.0.0.1:9443/devices/{device}/ws" {
		t.Errorf("ws url %q", s.Target.WSURL)
	}
	if *s.Events[1].Storm.ObeyRetryAfter || !*s.Devices.ObeyRetryAfter {
		t.Error("storm obey_retry_after not kept")
	}
	if s.Target.TelemetryURL != s.Target.URL {
		t.Errorf("telemetry url %q: without /commands the poll URL is used", s.Target.TelemetryURL)
	}
}

func TestParseErrorsHaveFieldPaths(t *testing.T) {
	for in, want := range map[string]string{
		`devices: {model: carrier-pigeon}`:        "devices.model",
		`devices: {count: -1}`:                    "devices.count",
		`events: [{at: 1s}]`:                      "events[0]",
		`commands: {broker: "http://x", rate: 1}`: "commands.broker",
		`commands: {topic: "devices/+/commands"}`: "commands.topic",
		`devices: {model: keepalive, wait: 5}`:    "devices.wait",
		`target: {url: "ftp://x/{device}"}`:       "target.url",
		`devices: {colour: blue}`:                 "colour",
		`devices: {tls: {version: "1.0"}}`:        "devices.tls.version",
	} {
		_, err := Parse([]byte(in))
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: err %v, want ErrInvalid naming %s", in, err, want)
		}
	}
}

// FuzzScenario: any input either fails with ErrInvalid or yields a
// scenario within bounds; nothing panics.
func FuzzScenario(f *testing.F) {
	f.Add([]byte(`devices: {count: 10, model: longpoll}`))
	f.Add([]byte(`events: [{at: 1s, storm: {}}]`))
	f.Add([]byte(`commands: {broker: "mqtt://127.0.0.1:1883", per_device: true}`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error not ErrInvalid: %v", err)
			}
			return
		}
		if s.Devices.Count < 1 || s.Devices.Count > MaxDevices || s.Duration <= 0 || s.Duration > MaxDuration ||
			*s.Devices.Interval < 0 || s.Devices.Ramp <= 0 || s.Commands.Size < 1 || s.Commands.Size > MaxSize {
			t.Fatalf("accepted out of bounds: %+v", s)
		}
		for _, e := range s.Events {
			if (e.Restart == "") == (e.Storm == nil) {
				t.Fatalf("event with both or neither: %+v", e)
			}
		}
	})
}
