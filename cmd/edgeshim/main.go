// Command edgeshim is the edge proxy and protocol-translation sidecar for IoT
// fleets. It parses its command line, wires the packages together and runs
// them; all behaviour lives in the packages.
//
//	edgeshim run [-c FILE]     serve (no -c: the embedded default, on loopback)
//	edgeshim validate -c FILE  check a configuration, print every problem
//	edgeshim version           print the version
//	edgeshim health [-url URL] probe /readyz (a container HEALTHCHECK)
//
// Positional arguments are refused (exit 2): "edgeshim run FILE" must not
// quietly serve the embedded default instead of FILE.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strings"
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
		if !parseArgs(fs, args[1:], stderr) {
			return 2
		}
		cfg, err := loadConfig(*file)
		if err != nil {
			printProblems(stderr, *file, err)
			return 1
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		if err := serve(ctx, cfg, *file, stderr); err != nil {
			fmt.Fprintln(stderr, "edgeshim:", err)
			return 1
		}
		return 0
	case "validate":
		fs := flag.NewFlagSet("validate", flag.ContinueOnError)
		fs.SetOutput(stderr)
		file := fs.String("c", "", "config file")
		if !parseArgs(fs, args[1:], stderr) {
			return 2
		}
		if *file == "" {
			fmt.Fprintln(stderr, "edgeshim validate: -c FILE is required")
			return 2
		}
		if _, err := loadConfig(*file); err != nil {
			printProblems(stderr, *file, err)
			return 1
		}
		fmt.Fprintln(stdout, "ok:", *file)
		return 0
	case "health":
		return runHealth(args[1:], stdout, stderr)
	case "version", "-version", "--version", "help", "-h", "--help":
		if len(args) > 1 {
			fmt.Fprintf(stderr, "edgeshim %s: unexpected argument %q\n", strings.TrimLeft(args[0], "-"), args[1])
			return 2
		}
		if strings.HasSuffix(args[0], "version") {
			fmt.Fprintln(stdout, "edgeshim", versionString())
		} else {
			usage(stdout)
		}
		return 0
	}
	fmt.Fprintf(stderr, "edgeshim: unknown command %q\n", args[0])
	usage(stderr)
	return 2
}

// parseArgs parses a subcommand's flags and refuses positional arguments:
// "edgeshim run edgeshim.yaml" would otherwise serve the embedded default
// and ignore the file.
func parseArgs(fs *flag.FlagSet, args []string, stderr io.Writer) bool {
	if err := fs.Parse(args); err != nil {
		return false
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "edgeshim %s: unexpected argument %q; a config file is given with -c FILE\n", fs.Name(), fs.Arg(0))
		return false
	}
	return true
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage:
  edgeshim run [-c FILE]      serve; without -c, the embedded default (loopback only)
  edgeshim validate -c FILE   check a configuration
  edgeshim version            print the version
  edgeshim health [-url URL]  exit 0 if URL (default http://127.0.0.1:9090/readyz) answers 2xx, else 1
`)
}

// loadConfig loads FILE (or the embedded default), fills defaults,
// validates and checks the files it names, reporting every problem.
func loadConfig(file string) (*config.Config, error) {
	var cfg *config.Config
	if file != "" {
		c, err := config.LoadChecked(file)
		if err != nil {
			return nil, err
		}
		cfg = c
	} else {
		cfg = config.Default().WithDefaults()
		if err := errors.Join(cfg.Validate(), cfg.CheckFiles()); err != nil {
			return nil, err
		}
	}
	var errs []error
	for _, name := range slices.Sorted(maps.Keys(cfg.Bridges)) {
		if err := bridge.CheckConfig(cfg.Bridges[name]); err != nil { // what Validate cannot: the poll template
			errs = append(errs, fmt.Errorf("bridges.%s.%w", name, err)) // err starts with its field path
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return cfg, nil
}

// printProblems prints each problem on its own line, those located in the
// file as FILE:LINE: path: message (the form editors jump to).
func printProblems(w io.Writer, file string, err error) {
	if file == "" {
		file = "embedded default"
	}
	for _, e := range flatten(err) {
		var fe *config.FieldError
		switch {
		case errors.As(e, &fe) && fe.Line > 0:
			fmt.Fprintf(w, "%s:%d: %s: %s\n", file, fe.Line, fe.Path, fe.Msg)
		default:
			fmt.Fprintf(w, "%s: %v\n", file, e)
		}
	}
}

// flatten returns the errors joined in err, nested joins included.
func flatten(err error) []error {
	j, ok := err.(interface{ Unwrap() []error })
	if !ok {
		return []error{err}
	}
	var out []error
	for _, e := range j.Unwrap() {
		out = append(out, flatten(e)...)
	}
	return out
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
