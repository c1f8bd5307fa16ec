package main

import (
	"fmt"
	"io"

	"github.com/edgeshim/edgeshim/config"
	"github.com/edgeshim/edgeshim/limits/accesslog"
)

// openAccessLog returns the access log the configuration asks for: nil
// when off, on logw (the other logs' writer) without a file. Its Reopen
// reopens the file after rotation (a SIGHUP's business).
func openAccessLog(c config.AccessLog, logw io.Writer) (*accesslog.Logger, error) {
	if c.Enabled != nil && !*c.Enabled {
		return nil, nil
	}
	o := accesslog.Options{Writer: logw, JSON: c.Format == "json", Sample: deref(c.Sample), ErrorSample: deref(c.ErrorSample)}
	if c.File == "" {
		return accesslog.New(o), nil
	}
	l, err := accesslog.Open(c.File, o)
	if err != nil {
		return nil, fmt.Errorf("access_log.file: %w", err)
	}
	return l, nil
}

func deref(p *float64) float64 {
	if p == nil {
		return 0
	}
	return *p
}
