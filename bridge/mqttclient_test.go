package bridge

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/edgeshim/edgeshim/bridge/mqtt"
	"github.com/edgeshim/edgeshim/bridge/mqtt/mqtttest"
)

// mosquitto starts a real broker for the test (mqtttest.Mosquitto).
var mosquitto = mqtttest.Mosquitto

// backendClient is a backend application's MQTT connection (clean
// start), closed when the test ends.
func backendClient(t *testing.T, broker, id string) *mqttConn {
	t.Helper()
	conn, err := net.Dial("tcp", broker)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, _, err := mqtt.Connect(ctx, conn, mqtt.Options{Connect: &packets.Connect{ProtocolName: "MQTT", ProtocolVersion: 5, ClientID: id, CleanStart: true}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return (*mqttConn)(c)
}
