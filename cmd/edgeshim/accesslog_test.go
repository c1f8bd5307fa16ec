package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeshim/edgeshim/config"
	"github.com/edgeshim/edgeshim/limits/accesslog"
)

func TestOpenAccessLog(t *testing.T) {
	one, off := 1.0, false
	var stderr bytes.Buffer
	if l, err := openAccessLog(config.AccessLog{Enabled: &off}, &stderr); l != nil || err != nil {
		t.Errorf("enabled: false gave %v, %v", l, err)
	}
	if _, err := openAccessLog(config.AccessLog{File: filepath.Join(t.TempDir(), "no", "such", "dir", "a.log")}, &stderr); err == nil || !strings.HasPrefix(err.Error(), "access_log.file: ") {
		t.Errorf("unopenable file: %v, want an error naming access_log.file", err)
	}
	path := filepath.Join(t.TempDir(), "access.log")
	l, err := openAccessLog(config.AccessLog{File: path, Format: "json", Sample: &one, ErrorSample: &one}, &stderr)
	if err != nil {
		t.Fatal(err)
	}
	rec := &accesslog.Record{Method: "GET", Path: "/a"}
	l.Begin(rec)
	rec.Done(200, 1)
	// Rotation: the file is moved away, Reopen starts a new one.
	os.Rename(path, path+".1")
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	rec = &accesslog.Record{Method: "GET", Path: "/b"}
	l.Begin(rec)
	rec.Done(200, 1)
	l.Close()
	old, _ := os.ReadFile(path + ".1")
	cur, _ := os.ReadFile(path)
	if !strings.Contains(string(old), `"path":"/a"`) || !strings.Contains(string(cur), `"path":"/b"`) || stderr.Len() != 0 {
		t.Errorf("rotated %q, current %q, stderr %q", old, cur, stderr.String())
	}
}
