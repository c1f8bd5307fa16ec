package mqtt

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/edgeshim/edgeshim/limits/park"
)

// settledGoroutines waits until the goroutine count is at most want (a
// reader's pass, a parker's wake-up, end for a moment) and returns the
// count seen last.
func settledGoroutines(want int, within time.Duration) int {
	g := runtime.NumGoroutine()
	for deadline := time.Now().Add(within); g > want && time.Now().Before(deadline); g = runtime.NumGoroutine() {
		time.Sleep(10 * time.Millisecond) // there is no signal of a goroutine's end
	}
	return g
}

// TestIdleConnsHoldNoGoroutine: idle connections to a real broker, each
// subscribed, parked in a Parker, hold no goroutine at all; each still
// gets what the broker sends, and parks again.
func TestIdleConnsHoldNoGoroutine(t *testing.T) {
	const n = 50
	addr, _ := mosquitto(t, "")
	app := mustClient(t, addr, clientOpts{id: "app", clean: true, keepalive: 30})
	p := testParker(t)
	g0 := runtime.NumGoroutine() // before dialling
	var devs []*testClient
	for i := range n {
		c, _, err := dialClientWith(t, addr, clientOpts{id: fmt.Sprintf("idle-%d", i), clean: true, keepalive: 30}, p)
		if err != nil {
			t.Fatal(err)
		}
		c.sub(t, fmt.Sprintf("cmd/%d", i))
		devs = append(devs, c)
	}
	if g := settledGoroutines(g0, 10*time.Second); g > g0 {
		t.Fatalf("%d idle connections hold %d goroutines", n, g-g0)
	}
	if p.Len() != n {
		t.Errorf("%d connections registered in the parker, want %d", p.Len(), n)
	}
	for i, c := range devs {
		app.send(t, fmt.Sprintf("cmd/%d", i), "wake")
		got := c.next(t)
		if string(got.Payload) != "wake" {
			t.Fatalf("device %d got %q", i, got.Payload)
		}
		if err := c.Ack(got.PacketID); err != nil {
			t.Fatal(err)
		}
	}
	if g := settledGoroutines(g0, 10*time.Second); g > g0 {
		t.Fatalf("after a command each, %d idle connections hold %d goroutines", n, g-g0)
	}
}

// TestParkedReaderLargePacketsInPieces: packets much larger than a read,
// arriving in pieces (a relay passes the broker's bytes on 1000 at a
// time) so that the reader parks in the middle of packets, come out whole
// and in order, with small ones between them; mqtts is covered by the
// integration test of an mqtts upstream.
func TestParkedReaderLargePacketsInPieces(t *testing.T) {
	addr, _ := mosquitto(t, "")
	for _, unparked := range []bool{false, true} {
		t.Run(fmt.Sprintf("unparked=%v", unparked), func(t *testing.T) {
			app := mustClient(t, addr, clientOpts{id: "app", clean: true, keepalive: 30})
			dev := mustClient(t, choppingRelay(t, addr, 1000), clientOpts{id: "dev", clean: true, keepalive: 30, unparked: unparked})
			dev.sub(t, "cmd")
			if dev.h != nil == unparked {
				t.Fatalf("parked reader: %v, want %v", dev.h != nil, !unparked)
			}
			want := [][]byte{bytes.Repeat([]byte("a"), 300<<10), []byte("small"), bytes.Repeat([]byte("b"), readSize+1), []byte("x")}
			for _, p := range want {
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				if err := app.Publish(ctx, &packets.Publish{Topic: "cmd", QoS: 1, Payload: p}); err != nil {
					t.Fatal(err)
				}
				cancel()
			}
			for i, w := range want {
				got := dev.next(t)
				if !bytes.Equal(got.Payload, w) {
					t.Fatalf("publish %d: %d bytes, want %d", i, len(got.Payload), len(w))
				}
				if err := dev.Ack(got.PacketID); err != nil {
					t.Fatal(err)
				}
			}
			if n := dev.Unacked(); n != 0 {
				t.Errorf("%d publishes unacked", n)
			}
		})
	}
}

// choppingRelay relays one connection to addr, passing the broker's bytes
// on n at a time, each write a moment after the last (pacing, so that
// each piece arrives alone). It ends with the test.
func choppingRelay(t *testing.T, addr string, n int) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var conns []net.Conn
	var mu sync.Mutex
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		c, err := ln.Accept()
		if err != nil {
			return
		}
		b, err := net.Dial("tcp", addr)
		mu.Lock()
		conns = append(conns, c)
		if err == nil {
			conns = append(conns, b)
		}
		mu.Unlock()
		if err != nil {
			c.Close()
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, _ = io.Copy(b, c)
			b.Close()
		}()
		buf := make([]byte, n)
		for {
			m, err := b.Read(buf)
			if m > 0 {
				if _, err := c.Write(buf[:m]); err != nil {
					return
				}
				time.Sleep(200 * time.Microsecond)
			}
			if err != nil {
				c.Close()
				return
			}
		}
	}()
	return ln.Addr().String()
}

// tlsMosquitto starts mosquitto with a TLS listener (a self-signed
// certificate for 127.0.0.1) and returns its address and a client config
// that trusts it.
func tlsMosquitto(t *testing.T) (string, *tls.Config) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o644); err != nil {
		t.Fatal(err)
	}
	addr, _ := mosquitto(t, fmt.Sprintf("certfile %s\nkeyfile %s\n", certFile, keyFile))
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"}
}

// dialTLS connects a client over TLS to addr, its socket Pollable beneath
// TLS, its reader parked in p.
func dialTLS(t *testing.T, addr string, cfg *tls.Config, id string, p *park.Parker) *testClient {
	t.Helper()
	raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	tc := tls.Client(Pollable(raw), cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		t.Fatal(err)
	}
	c := &testClient{pubs: make(chan *packets.Publish, 100), lost: make(chan error, 1)}
	c.Conn, _, err = Connect(ctx, tc, Options{Parker: p,
		Connect:   &packets.Connect{ProtocolName: "MQTT", ProtocolVersion: 5, ClientID: id, CleanStart: true, KeepAlive: 30},
		OnPublish: func(_ *Conn, p *packets.Publish) { c.pubs <- p },
		OnLost:    func(_ *Conn, err error) { c.lost <- err },
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// TestParkedTLS: over TLS (mqtts), idle connections hold no goroutine,
// and large packets whose TLS records arrive in pieces (the reader parks
// with part of a record read by crypto/tls) come out whole.
func TestParkedTLS(t *testing.T) {
	const n = 20
	addr, cfg := tlsMosquitto(t)
	p := testParker(t)
	app := dialTLS(t, addr, cfg, "app", p)
	g0 := runtime.NumGoroutine()
	var devs []*testClient
	for i := range n {
		c := dialTLS(t, addr, cfg, fmt.Sprintf("tls-%d", i), p)
		if c.h == nil {
			t.Fatal("the reader of a TLS connection over a Pollable socket is not parked")
		}
		c.sub(t, fmt.Sprintf("cmd/%d", i))
		devs = append(devs, c)
	}
	if g := settledGoroutines(g0, 10*time.Second); g > g0 {
		t.Fatalf("%d idle TLS connections hold %d goroutines", n, g-g0)
	}
	chopped := dialTLS(t, choppingRelay(t, addr, 1000), cfg, "chopped", p)
	chopped.sub(t, "big")
	want := [][]byte{bytes.Repeat([]byte("a"), 100<<10), []byte("small"), bytes.Repeat([]byte("b"), 40<<10)}
	for _, w := range want {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := app.Publish(ctx, &packets.Publish{Topic: "big", QoS: 1, Payload: w}); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
	for i, w := range want {
		got := chopped.next(t)
		if !bytes.Equal(got.Payload, w) {
			t.Fatalf("publish %d: %d bytes, want %d", i, len(got.Payload), len(w))
		}
	}
	app.send(t, "cmd/3", "wake")
	if got := devs[3].next(t); string(got.Payload) != "wake" {
		t.Fatalf("got %q", got.Payload)
	}
}
