package bridge

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"text/template"
	"text/template/parse"
	"time"
	"unicode/utf8"

	"github.com/edgeshim/edgeshim/config"
)

// Poll answers with format template. The operator's Go text/template
// renders the body of a command answer (and of the empty answer) from
// tmplData. Every field prints as a JSON value (strings quoted and
// escaped), so a command can never break out of the JSON it is placed in;
// only the explicit raw function and PayloadJSON (a payload that is itself
// valid JSON) put unescaped bytes in the answer. A template may use only
// the functions in tmplFuncs and the comparison builtins, may range only
// over .Commands (not nested), and may not define or call templates: its
// work is bounded by its own size times poll.max_batch. The output is
// bounded by template.max_bytes, its rendering time by renderBudget.

// ErrRender is a template rendering that failed or exceeded its bounds.
var ErrRender = errors.New("poll template")

// renderBudget bounds one rendering's time (checked on every write).
const renderBudget = 250 * time.Millisecond

// tmplData is what a poll template sees.
type tmplData struct {
	// Commands are the commands of this answer (none in the empty one).
	Commands []tmplCommand
	// Count is len(Commands).
	Count int
	// Device is the device id.
	Device jsonText
}

// tmplCommand is one command as a template sees it.
type tmplCommand struct {
	ID    jsonText
	Topic jsonText
	// Payload is the payload as text; bytes that are not UTF-8 become
	// U+FFFD (use PayloadBase64 for binary payloads).
	Payload jsonText
	// PayloadBase64 is the payload in standard base64.
	PayloadBase64 jsonText
	// PayloadJSON is the payload itself when it is valid JSON; otherwise
	// a JSON string: the text if it is UTF-8, else its base64.
	PayloadJSON rawJSON
	// Binary reports a payload that is not valid UTF-8.
	Binary bool
	// IsJSON reports a payload that is valid JSON.
	IsJSON bool
	// Arrived is when the command reached edgeshim, RFC 3339 in UTC;
	// ArrivedUnix the same in Unix seconds.
	Arrived     jsonText
	ArrivedUnix int64
	// ExpiresIn is the whole seconds left before the command expires,
	// rounded up; null (and less than 0 in comparisons) when it has none.
	ExpiresIn expiresIn
}

// jsonText prints as a JSON string.
type jsonText string

func (t jsonText) String() string { return quoteJSON(string(t)) }

// rawJSON is a JSON value printed as is.
type rawJSON string

func (r rawJSON) String() string { return string(r) }

// expiresIn is seconds left; -1: no expiry, printed null.
type expiresIn int64

func (e expiresIn) String() string {
	if e < 0 {
		return "null"
	}
	return strconv.FormatInt(int64(e), 10)
}

func quoteJSON(s string) string {
	b, _ := json.Marshal(s) // never fails for a string; invalid UTF-8 → U+FFFD
	return string(b)
}

// tmplFuncs are the functions a template may call, besides the
// comparison and logic builtins in tmplBuiltins.
var tmplFuncs = template.FuncMap{
	// json prints any value as JSON (fields print as JSON already).
	"json": func(v any) (rawJSON, error) {
		switch x := v.(type) {
		case jsonText, rawJSON, expiresIn:
			return rawJSON(fmt.Sprint(x)), nil
		}
		b, err := json.Marshal(v)
		return rawJSON(b), err
	},
	// base64 encodes text (e.g. .Topic) in standard base64, as a JSON
	// string.
	"base64": func(v jsonText) jsonText { return jsonText(base64.StdEncoding.EncodeToString([]byte(v))) },
	// raw prints text unescaped: the operator's explicit choice.
	"raw": func(v any) string {
		switch x := v.(type) {
		case jsonText:
			return string(x)
		case rawJSON:
			return string(x)
		}
		return fmt.Sprint(v)
	},
}

// tmplBuiltins are the text/template builtins a template may call.
var tmplBuiltins = map[string]bool{"len": true, "index": true, "slice": true, "eq": true, "ne": true,
	"lt": true, "le": true, "gt": true, "ge": true, "and": true, "or": true, "not": true}

// answerTemplate renders poll answers (format template).
type answerTemplate struct {
	body, empty *template.Template // empty nil: body with no commands
	status      int
	header      http.Header // Content-Type and the configured headers
	maxBytes    int
	usesRaw     bool
	now         func() time.Time
}

// compileAnswer parses poll.template and trial-renders it with sample
// commands; errors carry the field path below the bridge.
func compileAnswer(c config.Poll, now func() time.Time) (*answerTemplate, error) {
	t := c.Template
	a := &answerTemplate{status: t.Status, maxBytes: int(t.MaxBytes), now: now, header: http.Header{}}
	a.header.Set("Content-Type", t.ContentType)
	for k, v := range t.Headers {
		a.header.Set(k, v)
	}
	var err error
	if a.body, err = parseAnswer("body", t.Body, &a.usesRaw); err != nil {
		return nil, fmt.Errorf("poll.template.body: %w", err)
	}
	if t.Empty != "" {
		if a.empty, err = parseAnswer("empty", t.Empty, &a.usesRaw); err != nil {
			return nil, fmt.Errorf("poll.template.empty: %w", err)
		}
	}
	if err := a.trial(c.MaxBatch, c.EmptyStatus != http.StatusNoContent); err != nil {
		return nil, err
	}
	return a, nil
}

func parseAnswer(name, text string, usesRaw *bool) (*template.Template, error) {
	t, err := template.New(name).Option("missingkey=error").Funcs(tmplFuncs).Parse(text)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTemplate, err)
	}
	if len(t.Templates()) > 1 {
		return nil, fmt.Errorf("%w: {{define}} and {{block}} are not allowed", ErrTemplate)
	}
	if err := (&nodeChecker{tree: t.Tree, usesRaw: usesRaw}).check(t.Tree.Root, false); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrTemplate, err)
	}
	return t, nil
}

// nodeChecker enforces the template rules that bound a rendering's work.
type nodeChecker struct {
	tree    *parse.Tree
	usesRaw *bool
}

// at is the node's place, "name:line:col".
func (k *nodeChecker) at(n parse.Node) string {
	loc, _ := k.tree.ErrorContext(n)
	return loc
}

func (k *nodeChecker) check(n parse.Node, inRange bool) error {
	switch x := n.(type) {
	case nil:
		return nil
	case *parse.ListNode:
		if x == nil {
			return nil
		}
		for _, c := range x.Nodes {
			if err := k.check(c, inRange); err != nil {
				return err
			}
		}
	case *parse.ActionNode:
		return k.check(x.Pipe, inRange)
	case *parse.IfNode:
		return k.branch(&x.BranchNode, inRange)
	case *parse.WithNode:
		return k.branch(&x.BranchNode, inRange)
	case *parse.RangeNode:
		if inRange {
			return fmt.Errorf("%s: nested range is not allowed", k.at(x))
		}
		if !rangesCommands(x.Pipe) {
			return fmt.Errorf("%s: range only over .Commands", k.at(x))
		}
		if err := k.check(x.List, true); err != nil {
			return err
		}
		return k.check(x.ElseList, inRange)
	case *parse.TemplateNode:
		return fmt.Errorf("%s: {{template}} is not allowed", k.at(x))
	case *parse.PipeNode:
		if x == nil {
			return nil
		}
		for _, c := range x.Cmds {
			if err := k.check(c, inRange); err != nil {
				return err
			}
		}
	case *parse.CommandNode:
		for _, a := range x.Args {
			if err := k.check(a, inRange); err != nil {
				return err
			}
		}
	case *parse.ChainNode:
		return k.check(x.Node, inRange)
	case *parse.IdentifierNode:
		if _, ok := tmplFuncs[x.Ident]; !ok && !tmplBuiltins[x.Ident] {
			return fmt.Errorf("%s: function %q is not allowed (json, base64, raw, len, index, slice, eq, ne, lt, le, gt, ge, and, or, not)", k.at(x), x.Ident)
		}
		if x.Ident == "raw" {
			*k.usesRaw = true
		}
	}
	return nil
}

func (k *nodeChecker) branch(b *parse.BranchNode, inRange bool) error {
	for _, n := range []parse.Node{b.Pipe, b.List, b.ElseList} {
		if err := k.check(n, inRange); err != nil {
			return err
		}
	}
	return nil
}

// rangesCommands reports a range pipeline that is .Commands or
// $.Commands, optionally declaring variables.
func rangesCommands(p *parse.PipeNode) bool {
	if p == nil || len(p.Cmds) != 1 || len(p.Cmds[0].Args) != 1 {
		return false
	}
	switch a := p.Cmds[0].Args[0].(type) {
	case *parse.FieldNode:
		return len(a.Ident) == 1 && a.Ident[0] == "Commands"
	case *parse.VariableNode:
		return len(a.Ident) == 2 && a.Ident[0] == "$" && a.Ident[1] == "Commands"
	}
	return false
}

// sampleCommands are the trial render's commands: a JSON, a text and a
// binary payload, each with characters that break naive JSON.
func sampleCommands(now time.Time) []*command {
	return []*command{
		{id: "sample-1", topic: "devices/sample/commands", payload: []byte(`{"open":true,"note":"a \"quoted\" </x>"}`), arrived: now, expires: now.Add(90 * time.Second)},
		{id: "sample-2", topic: "devices/sample/commands", payload: []byte("say \"hi\"\n\\ }]\u2028"), arrived: now},
		{id: "sample-3", topic: "devices/sample/commands", payload: []byte{0xff, 0x00, '"', 0xfe}, arrived: now},
	}
}

// trial renders the templates with sample commands (1 to maxBatch of
// them, and none). A JSON content type must give valid JSON; with raw,
// only for JSON payloads.
func (a *answerTemplate) trial(maxBatch int, emptyBody bool) error {
	now := a.now()
	samples := sampleCommands(now)
	isJSON := strings.Contains(strings.ToLower(a.header.Get("Content-Type")), "json")
	check := func(field string, cmds []*command, jsonPayloads bool) error {
		out, err := a.render("sample", cmds, now, 64<<20)
		if err != nil {
			return fmt.Errorf("poll.template.%s: trial render with %d sample command(s): %w", field, len(cmds), err)
		}
		if isJSON && (!a.usesRaw || jsonPayloads) && !json.Valid(out) {
			return fmt.Errorf("poll.template.%s: %w: trial render with %d sample command(s) is not valid JSON (content_type %s): %.200q",
				field, ErrTemplate, len(cmds), a.header.Get("Content-Type"), out)
		}
		return nil
	}
	for _, cmds := range [][]*command{samples[:1], samples[1:2], samples[2:3], samples[:min(3, maxBatch)]} {
		if err := check("body", cmds, len(cmds) == 1 && cmds[0] == samples[0]); err != nil {
			return err
		}
	}
	if emptyBody {
		field := "empty"
		if a.empty == nil {
			field = "body"
		}
		return check(field, nil, true)
	}
	return nil
}

// render renders the answer for cmds (the empty answer when there are
// none), within max bytes and renderBudget; now is the instant the
// commands' remaining expiry is computed for.
func (a *answerTemplate) render(device string, cmds []*command, now time.Time, max int) ([]byte, error) {
	t := a.body
	if len(cmds) == 0 && a.empty != nil {
		t = a.empty
	}
	d := tmplData{Count: len(cmds), Device: jsonText(device), Commands: make([]tmplCommand, len(cmds))}
	for i, c := range cmds {
		d.Commands[i] = templateCommand(c, now)
	}
	w := &boundedWriter{max: max, deadline: a.now().Add(renderBudget), now: a.now}
	if err := t.Execute(w, d); err != nil {
		if w.err != nil {
			return nil, w.err
		}
		return nil, fmt.Errorf("%w: %w", ErrRender, err)
	}
	return w.buf.Bytes(), nil
}

func templateCommand(c *command, now time.Time) tmplCommand {
	tc := tmplCommand{
		ID: jsonText(c.id), Topic: jsonText(c.topic), Payload: jsonText(c.payload),
		PayloadBase64: jsonText(base64.StdEncoding.EncodeToString(c.payload)),
		Binary:        !utf8.Valid(c.payload), IsJSON: json.Valid(c.payload),
		Arrived: jsonText(c.arrived.UTC().Format(time.RFC3339Nano)), ArrivedUnix: c.arrived.Unix(),
		ExpiresIn: expiresIn(c.expiresIn(now)),
	}
	switch {
	case tc.IsJSON:
		tc.PayloadJSON = rawJSON(c.payload)
	case tc.Binary:
		tc.PayloadJSON = rawJSON(tc.PayloadBase64.String())
	default:
		tc.PayloadJSON = rawJSON(tc.Payload.String())
	}
	return tc
}

// boundedWriter fails a rendering that grows past max bytes or runs past
// its deadline.
type boundedWriter struct {
	buf      bytes.Buffer
	max      int
	deadline time.Time
	now      func() time.Time
	err      error
}

func (w *boundedWriter) Write(p []byte) (int, error) {
	switch {
	case w.buf.Len()+len(p) > w.max:
		w.err = fmt.Errorf("%w: answer larger than max_bytes (%d)", ErrRender, w.max)
	case w.now().After(w.deadline):
		w.err = fmt.Errorf("%w: rendering took longer than %s", ErrRender, renderBudget)
	}
	if w.err != nil {
		return 0, w.err
	}
	return w.buf.Write(p)
}

// renderBatch renders as many of cmds as fit: all, else the first alone.
// A command that cannot be rendered even alone can never reach the
// device: it is dropped (acknowledged upstream, counted, logged) so that
// it does not block the commands behind it. It returns the body and the
// commands in it; the rest go back to the session.
func (b *Bridge) renderBatch(s *session, cmds []*command) ([]byte, []*command) {
	a := b.answer
	for len(cmds) > 0 {
		now := b.now()
		body, err := a.render(s.device, cmds, now, a.maxBytes)
		if err == nil {
			return body, cmds
		}
		if len(cmds) > 1 {
			s.requeue(cmds[1:])
			cmds = cmds[:1]
			continue
		}
		b.log.Warn("command cannot be rendered by poll.template; dropped", "device", s.device, "id", cmds[0].id, "err", err)
		b.m.unrenderable.Inc()
		s.discard(cmds)
		cmds = nil
	}
	return nil, nil
}

// writeHeader sets the answer's Content-Type and configured headers.
func (a *answerTemplate) writeHeader(w http.ResponseWriter) {
	h := w.Header()
	for k, v := range a.header {
		h[k] = v
	}
}

// CheckConfig checks what config validation cannot: poll.template is
// parsed and trial-rendered as New would. Errors carry the field path
// below the bridge.
func CheckConfig(c config.Bridge) error {
	if c.Poll.Format != "template" || c.Poll.Template == nil {
		return nil
	}
	_, err := compileAnswer(c.Poll, time.Now)
	return err
}
