// Package mqtttest starts the real MQTT broker that tests of MQTT code
// talk to: mosquitto, on a free loopback port.
package mqtttest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// Mosquitto starts a mosquitto broker on a free loopback port with extra
// config lines, stopped when the test ends. A missing mosquitto skips the
// test, or fails it under CI=true.
func Mosquitto(t testing.TB, extra string) (addr string, cmd *exec.Cmd) {
	t.Helper()
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		if _, serr := os.Stat("/usr/sbin/mosquitto"); serr == nil {
			bin = "/usr/sbin/mosquitto"
		} else if os.Getenv("CI") == "true" {
			t.Fatal("mosquitto is required (CI=true)")
		} else {
			t.Skip("mosquitto not installed")
		}
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	dir := t.TempDir()
	user := ""
	if os.Geteuid() == 0 {
		user = "user root\n"
	}
	conf := fmt.Sprintf("%slistener %d 127.0.0.1\nallow_anonymous true\nlog_dest stderr\nlog_type error\n%s\n", user, port, extra)
	path := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cmd = exec.Command(bin, "-c", path)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGCONT)
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("mosquitto output:\n%s", out.String())
		}
	})
	addr = "127.0.0.1:" + strconv.Itoa(port)
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return addr, cmd
		}
		if time.Now().After(deadline) {
			t.Fatalf("mosquitto not accepting: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
