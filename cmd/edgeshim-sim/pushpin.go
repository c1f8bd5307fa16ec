package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/edgeshim/edgeshim/cmd/edgeshim-sim/internal/grip"
	"github.com/edgeshim/edgeshim/cmd/edgeshim-sim/internal/scenario"
	"github.com/edgeshim/edgeshim/cmd/edgeshim-sim/internal/sim"
)

// pushpinTarget is -target and, for Pushpin, the GRIP origin the sim runs
// and the publish endpoint it sends commands to.
type pushpinTarget struct {
	kind, origin, publish string
}

// defaultChannel is the channel a Pushpin-held poll waits on.
const defaultChannel = "d-{device}"

// defaults fills what -target pushpin changes in the scenario before its
// own defaults: the channel as topic, and a drain for commands in flight
// (the scenario drains only with a broker).
func (t *pushpinTarget) defaults(s *scenario.Scenario) error {
	switch t.kind {
	case "edgeshim":
		return nil
	case "pushpin":
	default:
		return fmt.Errorf("-target %q: want edgeshim or pushpin", t.kind)
	}
	if s.Commands.Broker != "" {
		return errors.New("-target pushpin publishes to -pushpin-publish: leave -broker (commands.broker) empty")
	}
	if s.Commands.Topic == "" {
		s.Commands.Topic = defaultChannel
	}
	if s.Drain == 0 && (s.Commands.Rate > 0 || s.Commands.PerDevice) {
		s.Drain = 5 * time.Second
	}
	return nil
}

// start runs the GRIP origin and sets the Pushpin publisher in o; the
// returned func stops the origin (waiting for it) once the run is over.
func (t *pushpinTarget) start(s *scenario.Scenario, o *sim.Options) (stop func(), err error) {
	if t.kind != "pushpin" {
		return func() {}, nil
	}
	const mark = "DEVICEIDMARK"
	u, err := url.Parse(strings.ReplaceAll(s.Target.URL, "{device}", mark))
	if err != nil {
		return nil, fmt.Errorf("target.url: %w", err)
	}
	origin, err := grip.NewOrigin(strings.Replace(u.Path, mark, "{device}", 1), s.Commands.Topic)
	if err != nil {
		return nil, err
	}
	pub, err := grip.NewPublisher(t.publish, nil)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", t.origin)
	if err != nil {
		return nil, fmt.Errorf("grip origin: %w", err)
	}
	srv := &http.Server{Handler: origin, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute,
		MaxHeaderBytes: 16 << 10}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(ln) // ends with ErrServerClosed on Shutdown
	}()
	o.Publisher = pub
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if srv.Shutdown(ctx) != nil {
			srv.Close()
		}
		<-done
		holds, bad := origin.Counts()
		fmt.Fprintf(o.Log, "edgeshim-sim: grip origin answered %d polls with a hold, refused %d requests\n", holds, bad)
	}, nil
}
