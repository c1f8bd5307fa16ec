package integration

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"
)

// BenchmarkMosquittoSessionConnect measures how many device sessions per
// second mosquitto takes as edgeshim connects them: CONNECT (clean start
// false, session expiry, a retained will with a delay), SUBSCRIBE to the
// commands topic, the retained online presence (QoS 1). Sessions stay
// connected until the end, as edgeshim's do. It reports connects/s and
// mosquitto's CPU per connect (from /proc), the figure upstream.
// reconnect_rate's default is set from. Run with a fixed count:
//
//	go test -run '^$' -bench MosquittoSessionConnect -benchtime 5000x ./integration
func BenchmarkMosquittoSessionConnect(b *testing.B) {
	m := startMosquitto(b, "set_tcp_nodelay true\n")
	const workers = 32
	conns := make([]net.Conn, b.N)
	b.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	})
	cpu0 := procCPU(b, m.cmd.Process.Pid)
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	next := make(chan int)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				c, err := connectSession(m.Addr(), fmt.Sprintf("bench-%d", i))
				if err != nil {
					b.Error(err)
					return
				}
				conns[i] = c
			}
		}()
	}
	for i := range b.N {
		next <- i
	}
	close(next)
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	cpu := procCPU(b, m.cmd.Process.Pid) - cpu0
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "connects/s")
	b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "broker-cpu-µs/connect")
	b.ReportMetric(cpu.Seconds()/elapsed.Seconds()*100, "broker-cpu-%")
}

// connectSession runs one edgeshim-like session connect on a new
// connection and returns it open.
func connectSession(addr, id string) (net.Conn, error) {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	expiry, delay, recvMax := uint32(3600), uint32(120), uint16(64)
	status := "devices/" + id + "/status"
	steps := []struct {
		p interface {
			WriteTo(w io.Writer) (int64, error)
		}
		want byte
	}{
		{&packets.Connect{ProtocolName: "MQTT", ProtocolVersion: 5, ClientID: id, KeepAlive: 30,
			Properties: &packets.Properties{SessionExpiryInterval: &expiry, ReceiveMaximum: &recvMax},
			WillFlag:   true, WillRetain: true, WillQOS: 1, WillTopic: status, WillMessage: []byte("offline"),
			WillProperties: &packets.Properties{WillDelayInterval: &delay}}, packets.CONNACK},
		{&packets.Subscribe{PacketID: 1, Subscriptions: []packets.SubOptions{{Topic: "devices/" + id + "/commands", QoS: 1, RetainHandling: 1}}}, packets.SUBACK},
		{&packets.Publish{PacketID: 2, Topic: status, QoS: 1, Retain: true, Payload: []byte("online")}, packets.PUBACK},
	}
	for _, s := range steps {
		var buf bytes.Buffer
		if _, err := s.p.WriteTo(&buf); err != nil {
			c.Close()
			return nil, err
		}
		if _, err := c.Write(buf.Bytes()); err != nil {
			c.Close()
			return nil, err
		}
		pkt, err := packets.ReadPacket(c)
		if err != nil {
			c.Close()
			return nil, fmt.Errorf("%s: %w", id, err)
		}
		if pkt.FixedHeader.Type != s.want {
			c.Close()
			return nil, fmt.Errorf("%s: got %s", id, pkt.PacketType())
		}
	}
	_ = c.SetDeadline(time.Time{})
	return c, nil
}

// procCPU is a process's user+system CPU time, from /proc/PID/stat.
func procCPU(tb testing.TB, pid int) time.Duration {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		tb.Fatal(err)
	}
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond // USER_HZ 100
}
