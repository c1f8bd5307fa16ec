// Package grip is edgeshim-sim's Pushpin target: a small GRIP origin that
// answers every device poll with a hold on the device's channel, and a
// publisher that sends the sim's commands to Pushpin's HTTP publish
// endpoint. Pushpin holds the poll and completes it with a published
// command or, at Grip-Timeout, with the origin's empty answer. Pushpin
// keeps nothing for a device that is not holding a poll: a command
// published between two polls is lost (the sim's report counts it), which
// is the difference from edgeshim's at-least-once bridge.
package grip

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/edgeshim/edgeshim/cmd/edgeshim-sim/internal/sim"
)

// MaxWait bounds the Grip-Timeout the origin asks for, in seconds.
const MaxWait = 300

// maxDeviceLen bounds a device id taken from a request path.
const maxDeviceLen = 128

// ErrBadPoll is returned by ParsePoll for a request that is not a poll.
var ErrBadPoll = errors.New("not a device poll")

// ParsePoll takes the device id out of a request path matching the
// template (a path with one {device}) and the wait in seconds from the
// query (?wait=N, 0 when absent). The id is 1-128 of [A-Za-z0-9._-]; the
// wait 0-MaxWait.
func ParsePoll(tmpl, path, rawQuery string) (device string, wait int, err error) {
	pre, suf, ok := strings.Cut(tmpl, "{device}")
	if !ok {
		return "", 0, fmt.Errorf("%w: template %q has no {device}", ErrBadPoll, tmpl)
	}
	if len(path) < len(pre)+len(suf) || !strings.HasPrefix(path, pre) || !strings.HasSuffix(path, suf) {
		return "", 0, fmt.Errorf("%w: path %q does not match %q", ErrBadPoll, path, tmpl)
	}
	device = path[len(pre) : len(path)-len(suf)]
	if device == "" || len(device) > maxDeviceLen {
		return "", 0, fmt.Errorf("%w: device id of %d bytes", ErrBadPoll, len(device))
	}
	for _, c := range []byte(device) {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-') {
			return "", 0, fmt.Errorf("%w: device id %q: character %q", ErrBadPoll, device, c)
		}
	}
	q, err := url.ParseQuery(rawQuery)
	if err != nil {
		return "", 0, fmt.Errorf("%w: query: %w", ErrBadPoll, err)
	}
	if vs, ok := q["wait"]; ok {
		if len(vs) != 1 {
			return "", 0, fmt.Errorf("%w: wait given %d times", ErrBadPoll, len(vs))
		}
		wait, err = strconv.Atoi(vs[0])
		if err != nil || wait < 0 || wait > MaxWait || vs[0] != strconv.Itoa(wait) {
			return "", 0, fmt.Errorf("%w: wait %q, want 0-%d", ErrBadPoll, vs[0], MaxWait)
		}
	}
	return device, wait, nil
}

// Origin is the GRIP origin behind Pushpin: a GET poll with a wait is
// answered with a hold (Grip-Hold: response) on the device's channel for
// the wait; without a wait (a check-in) with the empty answer at once.
// The empty answer is 200 with no body, as the timeout response too.
type Origin struct {
	path    string // poll path template, {device} is the id
	channel string // channel template, {device} is the id
	holds   atomic.Int64
	bad     atomic.Int64
}

var _ http.Handler = (*Origin)(nil)

// NewOrigin answers polls on the path template (e.g.
// /devices/{device}/commands) with holds on the channel template (e.g.
// d-{device}: the channel the publisher's topic names).
func NewOrigin(pathTmpl, channelTmpl string) (*Origin, error) {
	if strings.Count(pathTmpl, "{device}") != 1 || strings.Count(channelTmpl, "{device}") != 1 {
		return nil, fmt.Errorf("grip origin: path %q and channel %q each need one {device}", pathTmpl, channelTmpl)
	}
	return &Origin{path: pathTmpl, channel: channelTmpl}, nil
}

func (o *Origin) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet {
		o.bad.Add(1)
		w.Header().Set("Allow", "GET")
		http.Error(w, "grip origin: only GET polls", http.StatusMethodNotAllowed)
		return
	}
	dev, wait, err := ParsePoll(o.path, r.URL.Path, r.URL.RawQuery)
	if err != nil {
		o.bad.Add(1)
		http.Error(w, "grip origin: "+err.Error(), http.StatusNotFound)
		return
	}
	h := w.Header()
	if wait > 0 {
		o.holds.Add(1)
		h.Set("Grip-Hold", "response")
		h.Set("Grip-Channel", strings.ReplaceAll(o.channel, "{device}", dev))
		h.Set("Grip-Timeout", strconv.Itoa(wait))
	}
	h.Set("Content-Length", "0")
	w.WriteHeader(http.StatusOK)
}

// Counts returns the polls answered with a hold and the requests refused.
func (o *Origin) Counts() (holds, bad int64) { return o.holds.Load(), o.bad.Load() }

// Publisher publishes each command to one Pushpin channel (the sim's topic,
// already expanded: d-<device>) as an http-response item, so a held poll
// completes with the payload as its body.
type Publisher struct {
	url    string
	client *http.Client
}

var _ sim.Publisher = (*Publisher)(nil)

// NewPublisher posts to Pushpin's publish endpoint
// (http://host:port/publish/, the handler's push_in_http_port) with
// client; nil uses a client with a 10 s timeout.
func NewPublisher(publishURL string, client *http.Client) (*Publisher, error) {
	u, err := url.Parse(publishURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("pushpin publish url %q: want http://host:port/publish/", publishURL)
	}
	if client == nil {
		client = &http.Client{Timeout: 10 * time.Second}
	}
	return &Publisher{url: publishURL, client: client}, nil
}

// publishItem is one item of Pushpin's publish request.
type publishItem struct {
	Channel string `json:"channel"`
	Formats struct {
		HTTPResponse struct {
			Code    int    `json:"code"`
			Body    string `json:"body,omitempty"`
			BodyBin string `json:"body-bin,omitempty"`
		} `json:"http-response"`
	} `json:"formats"`
}

// PublishBody is the JSON Pushpin's /publish/ takes for one payload on one
// channel: the payload as body (body-bin, base64, when it is not UTF-8).
func PublishBody(channel string, payload []byte) ([]byte, error) {
	var it publishItem
	it.Channel = channel
	it.Formats.HTTPResponse.Code = http.StatusOK
	if utf8.Valid(payload) {
		it.Formats.HTTPResponse.Body = string(payload)
	} else {
		it.Formats.HTTPResponse.BodyBin = base64.StdEncoding.EncodeToString(payload)
	}
	return json.Marshal(struct {
		Items []publishItem `json:"items"`
	}{[]publishItem{it}})
}

// Publish sends payload to the channel named by topic. expiry has no
// GRIP counterpart: Pushpin delivers to the polls held now or never.
func (p *Publisher) Publish(ctx context.Context, topic string, payload []byte, expiry time.Duration) error {
	body, err := PublishBody(topic, payload)
	if err != nil {
		return fmt.Errorf("pushpin publish: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("pushpin publish: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.client.Do(req)
	if err != nil {
		return fmt.Errorf("pushpin publish: %w", err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%w: pushpin answered %d %q", sim.ErrNotAccepted, resp.StatusCode, bytes.TrimSpace(msg))
	}
	return nil
}

// Close releases idle connections to Pushpin.
func (p *Publisher) Close() error {
	p.client.CloseIdleConnections()
	return nil
}
