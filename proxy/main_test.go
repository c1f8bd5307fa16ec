package proxy

import (
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("net/http.(*persistConn).writeLoop"),
		goleak.IgnoreTopFunction("net/http.(*persistConn).readLoop"),
		goleak.IgnoreTopFunction("internal/poll.runtime_pollWait"),
		// net/http lingers 500ms after answering a malformed request
		// (TestFastLimitsAndRefusals); Server.Close does not wait for it.
		goleak.IgnoreAnyFunction("net/http.(*conn).closeWriteAndWait"))
}
