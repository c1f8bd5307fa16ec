package integration

import (
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// testH1 makes Edge.Client speak HTTP/1.1, so that bridge polls take the
// HTTP/1.1 fast path (TestFastPathRunsBridgeTests).
var testH1 bool

// testFastPolls sums edgeshim_proxy_fast_polls_total of the instances
// seen before they were signalled or killed (noteFastPolls).
var testFastPolls atomic.Int64

// noteFastPolls adds the instance's fast-path polls to testFastPolls.
func (e *Edge) noteFastPolls() {
	admin, ok := e.addrs["admin"]
	if !ok {
		return
	}
	select {
	case <-e.exited:
		return
	default:
	}
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + admin + "/metrics")
	if err != nil {
		return
	}
	defer resp.Body.Close()
	testFastPolls.Add(int64(sumMetric(resp.Body, "edgeshim_proxy_fast_polls_total")))
}

// TestFastPathRunsBridgeTests runs the bridge tests again with HTTP/1.1
// clients, so that their polls are served (and held ones parked) on the
// fast path, and checks that some were: a test whose polls all went
// through net/http fails here.
func TestFastPathRunsBridgeTests(t *testing.T) {
	for name, test := range map[string]func(*testing.T){
		"LongPollReceivesCommand": TestBridgeLongPollReceivesCommand, "PresenceAndQueuedWhileAway": TestBridgePresenceAndQueuedWhileAway,
		"ExplicitAckSurvivesKill": TestBridgeExplicitAckSurvivesKill,
		"Eviction":                TestBridgeEviction, "Identity": TestBridgeIdentity, "ThousandDevices": TestBridgeThousandDevices,
		"ClientCertIdentity": TestBridgeClientCertIdentity, "MQTTSUpstream": TestBridgeMQTTSUpstream, "LegacyShapes": TestBridgeLegacyShapes,
		"ImpersonateHeaderUntrustedPeer": TestImpersonateHeaderUntrustedPeer, "ImpersonateHeaderTrustedPeer": TestImpersonateHeaderTrustedPeer,
		"ImpersonateToken": TestImpersonateToken, "ImpersonateCert": TestImpersonateCert, "ImpersonatePath": TestImpersonatePath,
		"ShutdownAnswersHeldPolls": TestShutdownAnswersHeldPolls,
		"ReplicasAckWrite":         TestReplicasAckWrite, "ReplicasAckExplicit": TestReplicasAckExplicit, "ReplicasKillOne": TestReplicasKillOne,
		"ReplicasWillDelay": TestReplicasWillDelay, "AckWriteNeedsReceipt": TestBridgeAckWriteNeedsReceipt,
		"RequestResponseRaw": TestRequestResponseRaw, "RequestResponseSurvivesKill": TestRequestResponseSurvivesKill,
		"ReloadTokensAndLimits": TestReloadTokensAndLimits, "ReloadCRL": TestReloadCRL,
		// Its own HTTP/1.1 poll checks the access log line; its HTTP/2 one stays.
		"AccessLogBridgeAndWebSockets": func(t *testing.T) { testH1 = false; TestAccessLogBridgeAndWebSockets(t) },
	} {
		testH1 = true
		before := testFastPolls.Load()
		ran := false
		t.Run(name, func(t *testing.T) { ran = true; test(t) })
		testH1 = false
		if ran && testFastPolls.Load() == before {
			t.Errorf("%s: no poll took the HTTP/1.1 fast path", name)
		}
	}
}
