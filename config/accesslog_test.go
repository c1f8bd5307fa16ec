package config

import (
	"strings"
	"testing"
)

func TestAccessLogDefaultsAndProblems(t *testing.T) {
	c, err := Parse([]byte(`
log: {format: json}
routes: [{path: /, access_log: false, proxy: {backends: ["http://127.0.0.1:1"]}}, {path: /a/, proxy: {backends: ["http://127.0.0.1:1"]}}]`), nil)
	if err != nil {
		t.Fatal(err)
	}
	d := c.WithDefaults()
	a := d.AccessLog
	if !*a.Enabled || a.Format != "json" || *a.Sample != DefaultAccessLogSample || *a.ErrorSample != 1 || a.File != "" {
		t.Errorf("defaults: enabled %v format %q sample %v error_sample %v file %q", *a.Enabled, a.Format, *a.Sample, *a.ErrorSample, a.File)
	}
	if *d.Routes[0].AccessLog || !*d.Routes[1].AccessLog {
		t.Errorf("routes' access_log: %v %v, want false, true (default)", *d.Routes[0].AccessLog, *d.Routes[1].AccessLog)
	}
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	c, err = Parse([]byte(`access_log: {format: xml, sample: 1.5, error_sample: -1}`), nil)
	if err != nil {
		t.Fatal(err)
	}
	err = c.WithDefaults().Validate()
	for _, want := range []string{"access_log.format: must be text or json", "access_log.sample: must be a fraction", "access_log.error_sample: must be a fraction"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("problems %v, want %q", err, want)
		}
	}
}
