// Command edgeshim is the edge proxy and protocol-translation sidecar for IoT
// fleets. It parses its command line, wires the packages together and runs
// them; all behaviour lives in the packages.
//
//	edgeshim run [-c FILE]     serve (no -c: the embedded default)
//	edgeshim validate -c FILE  check a configuration, print every problem
//	edgeshim version           print the version
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/edgeshim/edgeshim/bridge"
	"github.com/edgeshim/edgeshim/config"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = ""

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return 2
	}
	switch args[0] {
	case "run":
		fs := flag.NewFlagSet("run", flag.ContinueOnError)
		fs.SetOutput(stderr)
		file := fs.String("c", "", "config file (default: the embedded default)")
		if err := fs.Parse(args[1:]); err != nil {
			return 2
		}
		cfg, err := loadConfig(*file)
		if err != nil {
			fmt.Fprintln(stderr, "edgeshim:", err)
			return 1
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if err := serve(ctx, cfg, stderr); err != nil {
			fmt.Fprintln(stderr, "edgeshim:", err)
			return 1
		}
		return 0
	case "validate":
		fs := flag.NewFlagSet("validate", flag.ContinueOnError)
		fs.SetOutput(stderr)
		file := fs.String("c", "", "config file")
		if err := fs.Parse(args[1:]); err != nil {
			return 2
		}
		if *file == "" {
			fmt.Fprintln(stderr, "edgeshim validate: -c FILE is required")
			return 2
		}
		if _, err := loadConfig(*file); err != nil {
			printProblems(stderr, err)
			return 1
		}
		fmt.Fprintln(stdout, "ok:", *file)
		return 0
	case "version", "-version", "--version":
		fmt.Fprintln(stdout, "edgeshim", versionString())
		return 0
	case "help", "-h", "--help":
		usage(stdout)
		return 0
	}
	fmt.Fprintf(stderr, "edgeshim: unknown command %q\n", args[0])
	usage(stderr)
	return 2
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  edgeshim run [-c FILE]      serve; without -c, the embedded default
  edgeshim validate -c FILE   check a configuration
  edgeshim version            print the version
`)
}

// loadConfig loads FILE (or the embedded default), fills defaults and
// validates.
func loadConfig(file string) (*config.Config, error) {
	var raw *config.Config
	if file == "" {
		raw = config.Default()
	} else {
		var err error
		if raw, err = config.Load(file); err != nil {
			return nil, err
		}
	}
	cfg := raw.WithDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	for name, bc := range cfg.Bridges {
		if err := bridge.CheckConfig(bc); err != nil { // what Validate cannot: the poll template
			return nil, fmt.Errorf("bridges.%s.%w", name, err) // err starts with its field path
		}
	}
	return cfg, nil
}

// printProblems prints each joined error on its own line.
func printProblems(w io.Writer, err error) {
	var joined interface{ Unwrap() []error }
	if errors.As(err, &joined) {
		for _, e := range joined.Unwrap() {
			fmt.Fprintln(w, e)
		}
		return
	}
	fmt.Fprintln(w, err)
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "dev"
}
