package config

import (
	"strings"
	"testing"
)

func TestRouteNames(t *testing.T) {
	c, err := Parse([]byte(`routes:
  - {path: /devices/, proxy: {backends: ["http://a"]}}
  - {host: API.example.com, path: /, proxy: {backends: ["http://a"]}}
  - {name: legacy, host: old.example.com, path: /api/, proxy: {backends: ["http://a"]}}
`), func(string) (string, bool) { return "", false })
	if err != nil {
		t.Fatal(err)
	}
	d := c.WithDefaults()
	if err := d.Validate(); err != nil {
		t.Fatal(err)
	}
	for i, want := range []string{"/devices/", "api.example.com/", "legacy"} {
		if got := d.Routes[i].Name; got != want {
			t.Errorf("routes[%d].name = %q, want %q", i, got, want)
		}
	}
	if c.Routes[0].Name != "" {
		t.Error("WithDefaults modified its receiver")
	}
}

func TestRouteNameProblems(t *testing.T) {
	for _, tc := range []struct{ name, doc, want string }{
		{"derived duplicate", `routes:
  - {path: /x/, proxy: {backends: ["http://a"]}}
  - {path: /x/, proxy: {backends: ["http://b"]}}`, `routes[1].name: "/x/" is already the name of routes[0]; set name to tell them apart`},
		{"set duplicate", `routes:
  - {name: api, path: /x/, proxy: {backends: ["http://a"]}}
  - {name: api, path: /y/, proxy: {backends: ["http://b"]}}`, `routes[1].name: "api" is already the name of routes[0]; set name to tell them apart`},
		{"space", `routes: [{name: "my api", path: /, proxy: {backends: ["http://a"]}}]`,
			`routes[0].name: must be 1-128 printable ASCII characters without spaces, quotes or backslashes (got "my api")`},
		{"quote", `routes: [{name: 'a"b', path: /, proxy: {backends: ["http://a"]}}]`,
			`routes[0].name: must be 1-128 printable ASCII characters without spaces, quotes or backslashes (got "a\"b")`},
		{"too long", `routes: [{name: ` + strings.Repeat("x", 129) + `, path: /, proxy: {backends: ["http://a"]}}]`,
			`routes[0].name: must be 1-128 printable ASCII characters without spaces, quotes or backslashes (got "` + strings.Repeat("x", 129) + `")`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := problems(t, tc.doc)
			if strings.Join(got, "\n") != tc.want {
				t.Errorf("got:\n  %s\nwant:\n  %s", strings.Join(got, "\n  "), tc.want)
			}
		})
	}
}

func TestAdminAPIProblems(t *testing.T) {
	for _, tc := range []struct{ name, doc, want string }{
		{"loopback without token", "listen: {admin: \"127.0.0.1:9090\"}\nadmin_api: {enabled: true}", ""},
		{"localhost without token", "listen: {admin: \"localhost:9090\"}\nadmin_api: {enabled: true}", ""},
		{"any address without token", "listen: {admin: \":9090\"}\nadmin_api: {enabled: true}",
			`admin_api.token_file: is required when listen.admin is not a loopback address (got ":9090"): the API can end device sessions`},
		{"any address with token", "listen: {admin: \":9090\"}\nadmin_api: {enabled: true, token_file: /run/secrets/admin-token}", ""},
		{"admin off", "listen: {admin: \"off\"}\nadmin_api: {enabled: true}", `admin_api.enabled: needs listen.admin`},
		{"disabled", "listen: {admin: \":9090\"}\nadmin_api: {enabled: false}", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := strings.Join(problems(t, tc.doc), "\n"); got != tc.want {
				t.Errorf("got:\n  %s\nwant:\n  %s", got, tc.want)
			}
		})
	}
}
