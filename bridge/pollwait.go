package bridge

import (
	"fmt"
	"strings"
	"time"
)

// parseWait reads a poll's wait (whole seconds, from ?wait= or Prefer:
// wait=) and caps it at max. Any run of digits is a valid wait, however
// long: a value beyond max (even beyond int64) is max, never an overflow.
// Anything else (a sign, a unit, a fraction, spaces) is refused.
func parseWait(v string, max time.Duration) (time.Duration, error) {
	if v == "" {
		return 0, nil
	}
	if len(v) > 64 || strings.TrimLeft(v, "0123456789") != "" {
		return 0, fmt.Errorf("wait must be whole seconds (got %.64q)", v)
	}
	v = strings.TrimLeft(v, "0")
	limit := int64(max / time.Second)
	var n int64
	for _, d := range v {
		n = n*10 + int64(d-'0')
		if n > limit { // before it can overflow: limit is far below MaxInt64/10
			return max, nil
		}
	}
	return min(time.Duration(n)*time.Second, max), nil
}
