// Package integration holds edgeshim's end-to-end tests and benchmarks. They
// start the real edgeshim binary and real peers (mosquitto, pebble, nginx,
// HAProxy) as processes on loopback. Under CI=true a missing peer is a test
// failure, never a skip.
package integration
