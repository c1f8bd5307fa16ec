//go:build !linux

package park

import "errors"

// poller is not available here: every handle falls back to a goroutine
// blocked in the callback's read.
type poller struct{}

func newPoller(*Parker) (*poller, error) { return nil, errors.ErrUnsupported }

func (*poller) arm(*Handle) error { return errors.ErrUnsupported }
func (*poller) disarm(*Handle)    {}
func (*poller) close() error      { return nil }
