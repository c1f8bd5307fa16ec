package config

// Default returns the embedded default configuration used when edgeshim runs
// without a config file: a self-signed certificate, HTTPS on 127.0.0.1:8443,
// admin on 127.0.0.1:9090, an embedded MQTT broker on 127.0.0.1:1883 and the
// "fleet" bridge with path identity, so that
//
//	curl -k 'https://localhost:8443/devices/d1/commands?wait=30'
//
// receives what is published to devices/d1/commands.
//
// Every listener is on loopback: path identity proves nothing, so the
// default must not let anyone on the network read any device's commands.
// A written config has the documented listener defaults (":8443", all
// interfaces): its author chose its identity.
//
// Defaults are not filled; call WithDefaults on the result.
func Default() *Config {
	return &Config{
		Listen:         Listen{HTTPS: "127.0.0.1:8443", Admin: "127.0.0.1:9090"},
		EmbeddedBroker: EmbeddedBroker{Enabled: true, Listen: "127.0.0.1:1883"},
		Routes:         []Route{{Path: "/devices/", Bridge: "fleet"}},
		Bridges: map[string]Bridge{
			"fleet": {
				Upstream:  Upstream{URL: "mqtt://127.0.0.1:1883", ClientID: "{device}"},
				Identity:  Identity{From: "path", AllowUnauthenticated: true},
				Poll:      Poll{Path: "/devices/{device}/commands"},
				Telemetry: Telemetry{Path: "/devices/{device}/telemetry", Topic: "devices/{device}/telemetry"},
				Commands:  Commands{Topic: "devices/{device}/commands"},
				Presence:  Presence{Topic: "devices/{device}/status"},
			},
		},
	}
}
