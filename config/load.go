package config

import (
	"errors"
	"fmt"
	"io"
	"os"
)

// maxConfigSize bounds a configuration file.
const maxConfigSize = 16 << 20

// LoadChecked reads the file at path and Checks it with the process
// environment: the config with defaults filled, or every problem.
func LoadChecked(path string) (*Config, error) {
	data, err := readBounded(path, maxConfigSize)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	return Check(data, os.LookupEnv)
}

// Check parses data, fills defaults, validates, and opens every file the
// config names (CheckFiles). It returns the config with defaults filled, or
// every problem found, joined: unknown and duplicate keys, wrongly typed
// values, unset environment variables, validation errors and unusable
// files, each a *FieldError with its field path and, where the field (or
// its section) is in the file, its line.
func Check(data []byte, lookup LookupFunc) (*Config, error) {
	return check(data, lookup, true)
}

func check(data []byte, lookup LookupFunc, files bool) (*Config, error) {
	raw, w, err := parse(data, lookup)
	if err != nil {
		return nil, err
	}
	cfg := raw.WithDefaults()
	problems := w.errs
	add := func(err error) {
		for _, e := range unjoin(err) {
			var fe *FieldError
			if errors.As(e, &fe) {
				if w.reported(fe.Path) {
					continue
				}
				if fe.Line == 0 {
					fe.Line = w.line(fe.Path)
				}
			}
			problems = append(problems, e)
		}
	}
	add(cfg.Validate())
	if files {
		add(cfg.CheckFiles())
	}
	if len(problems) > 0 {
		return nil, errors.Join(problems...)
	}
	return cfg, nil
}

// unjoin returns the errors joined in err (err alone if it is not joined;
// none for nil).
func unjoin(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// ErrTooLarge is returned for a file larger than edgeshim reads.
var ErrTooLarge = errors.New("file too large")

// readBounded reads a regular file of at most limit bytes. A FIFO or device
// is refused rather than read (it could block, or never end).
func readBounded(path string, limit int64) ([]byte, error) {
	f, err := openRegular(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > limit {
		return nil, fmt.Errorf("%s: %w (more than %d bytes)", path, ErrTooLarge, limit)
	}
	return data, nil
}

// ErrNotRegular is returned for a path that is a directory, FIFO or device.
var ErrNotRegular = errors.New("not a regular file")

// openRegular opens path for reading if it is a regular file (or a link to
// one).
func openRegular(path string) (*os.File, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		kind := "a directory"
		if !fi.IsDir() {
			kind = "mode " + fi.Mode().Type().String()
		}
		return nil, fmt.Errorf("%s: %w: %s", path, ErrNotRegular, kind)
	}
	return os.Open(path)
}
