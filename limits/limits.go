// Package limits owns what edgeshim accepts and for how long: connection
// caps, per-IP and per-device rate limits (bounded state in golang-lru),
// TLS handshake admission, body/header/decompression limits, timeouts,
// heartbeat helpers and Retry-After with jitter. proxy, bridge and tlsterm
// apply what it provides.
package limits
