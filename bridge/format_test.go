package bridge

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/edgeshim/edgeshim/config"
)

// updatesTemplate is the {"updates":[…]} fleet's answer: the payload as
// raw JSON when it is JSON, else a string (base64 when binary).
const updatesTemplate = `{"updates":[{{range $i, $c := .Commands}}{{if $i}},{{end}}{"id":{{json $c.ID}},"data":{{$c.PayloadJSON}}{{if $c.Binary}},"encoding":"base64"{{end}}{{if ge $c.ExpiresIn 0}},"expires_in":{{$c.ExpiresIn}}{{end}}}{{end}}]}`

func pollConfig(body, empty string) config.Poll {
	c := config.Default()
	bc := c.Bridges["fleet"]
	bc.Poll.Format = "template"
	bc.Poll.Template = &config.PollTemplate{Body: body, Empty: empty}
	c.Bridges["fleet"] = bc
	return c.WithDefaults().Bridges["fleet"].Poll
}

func mustAnswer(t testing.TB, body, empty string) *answerTemplate {
	t.Helper()
	a, err := compileAnswer(pollConfig(body, empty), time.Now)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

type update struct {
	ID        string          `json:"id"`
	Data      json.RawMessage `json:"data"`
	Encoding  string          `json:"encoding"`
	ExpiresIn *int64          `json:"expires_in"`
}

// TestTemplateUpdatesFleet: the {"updates":[…]} shape with no, one and
// several commands; JSON payloads stay JSON, text becomes a string, binary
// base64; the remaining expiry is rounded up.
func TestTemplateUpdatesFleet(t *testing.T) {
	a := mustAnswer(t, updatesTemplate, "")
	now := time.Date(2026, 11, 30, 15, 0, 0, 0, time.UTC)
	jsonCmd := &command{id: "c-1", topic: "devices/door-17/commands", payload: []byte(`{"action":"open"}`), arrived: now, expires: now.Add(2500 * time.Millisecond)}
	textCmd := &command{id: "c-2", topic: "devices/door-17/commands", payload: []byte(`close "now"}]`), arrived: now}
	binCmd := &command{id: "c-3", topic: "devices/door-17/commands", payload: []byte{0xff, 0, 1}, arrived: now}
	for _, tc := range []struct {
		name string
		cmds []*command
		want []update
	}{
		{"none", nil, []update{}},
		{"one json", []*command{jsonCmd}, []update{{ID: "c-1", Data: json.RawMessage(`{"action":"open"}`), ExpiresIn: ptr(int64(3))}}},
		{"one text", []*command{textCmd}, []update{{ID: "c-2", Data: json.RawMessage(`"close \"now\"}]"`)}}},
		{"several", []*command{jsonCmd, textCmd, binCmd}, []update{
			{ID: "c-1", Data: json.RawMessage(`{"action":"open"}`), ExpiresIn: ptr(int64(3))},
			{ID: "c-2", Data: json.RawMessage(`"close \"now\"}]"`)},
			{ID: "c-3", Data: json.RawMessage(`"` + base64.StdEncoding.EncodeToString([]byte{0xff, 0, 1}) + `"`), Encoding: "base64"},
		}},
	} {
		out, err := a.render("door-17", tc.cmds, now, a.maxBytes)
		if err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		var got struct{ Updates []update }
		if err := json.Unmarshal(out, &got); err != nil {
			t.Fatalf("%s: %s is not JSON: %v", tc.name, out, err)
		}
		if len(got.Updates) != len(tc.want) {
			t.Fatalf("%s: %s: %d updates, want %d", tc.name, out, len(got.Updates), len(tc.want))
		}
		for i, w := range tc.want {
			g := got.Updates[i]
			if g.ID != w.ID || string(g.Data) != string(w.Data) || g.Encoding != w.Encoding || (g.ExpiresIn == nil) != (w.ExpiresIn == nil) ||
				(g.ExpiresIn != nil && *g.ExpiresIn != *w.ExpiresIn) {
				t.Errorf("%s: update %d = %+v (%s), want %+v", tc.name, i, g, out, w)
			}
		}
	}
	if out, _ := a.render("door-17", nil, now, a.maxBytes); string(out) != `{"updates":[]}` {
		t.Errorf("empty answer %s, want {\"updates\":[]}", out)
	}
}

func ptr[T any](v T) *T { return &v }

// TestTemplateFieldsEscape: every field prints as a JSON value, so a
// payload cannot leave the string it is placed in; raw is the explicit
// way out.
func TestTemplateFieldsEscape(t *testing.T) {
	a := mustAnswer(t, `{"p":{{(index .Commands 0).Payload}},"t":{{(index .Commands 0).Topic}},"d":{{.Device}},"n":{{.Count}}}`, `{"n":0}`)
	evil := &command{id: "x", topic: `a"b`, payload: []byte(`","admin":true,"x":"` + "\u2028\x00\xff"), arrived: time.Now()}
	out, err := a.render("d1", []*command{evil}, time.Now(), a.maxBytes)
	if err != nil {
		t.Fatal(err)
	}
	var got map[string]any
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("%s: %v", out, err)
	}
	if _, ok := got["admin"]; ok || len(got) != 4 || got["t"] != `a"b` || got["d"] != "d1" {
		t.Errorf("payload broke out: %s", out)
	}
	pc := pollConfig(`{{range .Commands}}{{raw .Payload}}{{end}}`, "")
	pc.Template.ContentType = "text/plain"
	r, err := compileAnswer(pc, time.Now)
	if err != nil {
		t.Fatal(err)
	}
	if out, _ := r.render("d1", []*command{{payload: []byte("plain <text>")}}, time.Now(), r.maxBytes); string(out) != "plain <text>" {
		t.Errorf("raw = %q", out)
	}
}

// TestTemplateRefused: templates that could run unbounded, call what is
// not allowed, fail to render or render invalid JSON are refused at start
// with the field path.
func TestTemplateRefused(t *testing.T) {
	for _, tc := range []struct{ body, empty, path, why string }{
		{`{{range .Commands}}`, "", "poll.template.body", "unexpected EOF"},
		{`{{printf "%s" .Count}}`, "", "poll.template.body", `"printf" is not allowed`},
		{`{{call .Count}}`, "", "poll.template.body", `"call" is not allowed`},
		{`{{range 1000000000}}{{end}}[]`, "", "poll.template.body", "range only over .Commands"},
		{`[{{range .Commands}}{{range $.Commands}}1{{end}}{{end}}]`, "", "poll.template.body", "nested range"},
		{`{{define "x"}}{{end}}[]`, "", "poll.template.body", "define"},
		{`[]`, `{{template "body"}}`, "poll.template.empty", "not allowed"},
		{`{"n":{{.Nope}}}`, "", "poll.template.body", "Nope"},
		{`{"id":{{raw (index .Commands 0).ID}}}`, "", "poll.template.body", "not valid JSON"},
		{`[{{range .Commands}}{{.ID}}{{end}}]`, "", "poll.template.body", "not valid JSON"}, // no commas
		{`{"u":[{{range $i, $c := .Commands}}{{if $i}},{{end}}{{.ID}}{{end}}]}`, `nope`, "poll.template.empty", "not valid JSON"},
	} {
		_, err := compileAnswer(pollConfig(tc.body, tc.empty), time.Now)
		if err == nil || !strings.HasPrefix(err.Error(), tc.path+":") || !strings.Contains(err.Error(), tc.why) {
			t.Errorf("%q/%q: err = %v, want %s: …%s…", tc.body, tc.empty, err, tc.path, tc.why)
		}
		if err != nil && !errors.Is(err, ErrTemplate) && !errors.Is(err, ErrRender) {
			t.Errorf("%q: %v is neither ErrTemplate nor ErrRender", tc.body, err)
		}
	}
}

// TestTemplateBounded: an answer past max_bytes is an error, never a
// truncated body; renderBatch then answers with the first command alone,
// and drops a command that cannot be rendered even alone.
func TestTemplateBounded(t *testing.T) {
	a := mustAnswer(t, updatesTemplate, "")
	a.maxBytes = 200
	big := &command{id: "big", payload: []byte(strings.Repeat("x", 300)), arrived: time.Now()}
	if _, err := a.render("d", []*command{big}, time.Now(), a.maxBytes); !errors.Is(err, ErrRender) {
		t.Fatalf("oversize render: %v, want ErrRender", err)
	}
	slow := &boundedWriter{max: 100, deadline: time.Unix(0, 0), now: time.Now}
	if _, err := slow.Write([]byte("x")); !errors.Is(err, ErrRender) {
		t.Errorf("write past the deadline: %v", err)
	}
}

// FuzzTemplateRender: whatever the command's id, topic and payload, the
// fleet's templates render valid JSON that gives back the payload.
func FuzzTemplateRender(f *testing.F) {
	f.Add("c-1", "devices/d/commands", []byte(`{"a":1}`))
	f.Add(`"`, "t", []byte("\"},{\"x\":1"))
	f.Add("", "", []byte{0xff, 0xfe, 0})
	f.Add("id", "t", []byte(" 1 "))
	a := mustAnswer(f, updatesTemplate, "")
	s := mustAnswer(f, `{"c":[{{range $i, $c := .Commands}}{{if $i}},{{end}}{"id":{{$c.ID}},"t":{{$c.Topic}},"p":{{$c.PayloadBase64}},"s":{{$c.Payload}}}{{end}}]}`, "")
	f.Fuzz(func(t *testing.T, id, topic string, payload []byte) {
		now := time.Now()
		cmds := []*command{{id: id, topic: topic, payload: payload, arrived: now}, {id: id, payload: payload, arrived: now, expires: now.Add(time.Second)}}
		out, err := a.render("d", cmds, now, 64<<20)
		if err != nil {
			t.Fatal(err)
		}
		var got struct{ Updates []update }
		if err := json.Unmarshal(out, &got); err != nil || len(got.Updates) != 2 {
			t.Fatalf("%q: %v", out, err)
		}
		if got.Updates[0].ID != string([]rune(id)) {
			t.Fatalf("id %q came back %q", id, got.Updates[0].ID)
		}
		out, err = s.render("d", cmds, now, 64<<20)
		if err != nil {
			t.Fatal(err)
		}
		var sgot struct {
			C []struct{ ID, T, P, S string }
		}
		if err := json.Unmarshal(out, &sgot); err != nil || len(sgot.C) != 2 {
			t.Fatalf("%q: %v", out, err)
		}
		if p, err := base64.StdEncoding.DecodeString(sgot.C[0].P); err != nil || string(p) != string(payload) {
			t.Fatalf("payload %q came back %q", payload, p)
		}
	})
}

// BenchmarkTemplateRender: one {"updates":[…]} answer of max_batch (10)
// commands with small JSON payloads.
func BenchmarkTemplateRender(b *testing.B) {
	a := mustAnswer(b, updatesTemplate, "")
	now := time.Now()
	cmds := make([]*command, 10)
	for i := range cmds {
		cmds[i] = &command{id: "c-" + strings.Repeat("x", i), topic: "devices/door-17/commands", payload: []byte(`{"action":"open","delay":5}`), arrived: now}
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := a.render("door-17", cmds, now, a.maxBytes); err != nil {
			b.Fatal(err)
		}
	}
}
