package config

import (
	"slices"
	"testing"
)

// TestPollTemplateValidation: poll.template's data is checked with field
// paths; its defaults make format template answer 200 when empty.
func TestPollTemplateValidation(t *testing.T) {
	const head = `bridges:
  b:
    upstream: {url: "mqtt://127.0.0.1:1883"}
    identity: {from: path, allow_unauthenticated: true}
    commands: {topic: "d/{device}/c"`
	for _, tc := range []struct{ name, doc, want string }{
		{"template without format", head + "}\n    poll: {path: \"/d/{device}\", template: {body: x}}", `bridges.b.poll.template: needs format template (got format "raw")`},
		{"format without template", head + "}\n    poll: {path: \"/d/{device}\", format: template}", `bridges.b.poll.template.body: is required with format template`},
		{"empty_body with template", head + "}\n    poll: {path: \"/d/{device}\", format: template, empty_body: x, template: {body: x}}", `bridges.b.poll.empty_body: is not used with format template: set template.empty`},
		{"status", head + "}\n    poll: {path: \"/d/{device}\", format: template, template: {body: x, status: 204}}", `bridges.b.poll.template.status: must be a 2xx status with a body (got 204)`},
		{"empty with 204", head + "}\n    poll: {path: \"/d/{device}\", format: template, empty_status: 204, template: {body: x, empty: y}}", `bridges.b.poll.template.empty: needs empty_status 200 (a 204 has no body)`},
		{"framing header", head + "}\n    poll: {path: \"/d/{device}\", format: template, template: {body: x, headers: {Content-Length: \"1\"}}}", `bridges.b.poll.template.headers.Content-Length: is set by edgeshim (content_type sets Content-Type)`},
		{"bad header value", head + "}\n    poll: {path: \"/d/{device}\", format: template, template: {body: x, headers: {X-A: \"a\\nb\"}}}", `bridges.b.poll.template.headers.X-A: invalid header value`},
		{"max bytes", head + "}\n    poll: {path: \"/d/{device}\", format: template, template: {body: x, max_bytes: 1GiB}}", `bridges.b.poll.template.max_bytes: must be 1B-64MiB (got 1073741824)`},
	} {
		if got := problems(t, tc.doc); !slices.Contains(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
	c, err := Parse([]byte(head+"}\n    poll: {path: \"/d/{device}\", format: template, template: {body: x}}"), noEnv)
	if err != nil {
		t.Fatal(err)
	}
	p := c.WithDefaults().Bridges["b"].Poll
	if p.EmptyStatus != 200 || p.Template.Status != 200 || p.Template.ContentType != "application/json" || p.Template.MaxBytes != 1<<20 || p.AckWriteTimeout.D() != 5e9 {
		t.Errorf("defaults: %+v %+v", p, *p.Template)
	}
}
