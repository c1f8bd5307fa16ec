package h1

import "testing"

func TestHostForMatch(t *testing.T) {
	for in, want := range map[string]string{
		"Example.COM": "example.com", "example.com:8443": "example.com", "[::1]:443": "::1", "[::1]": "[::1]",
		"a:b:c": "a:b:c", "example.com.": "example.com", "x:": "x",
	} {
		if got := string(HostForMatch(nil, []byte(in))); got != want {
			t.Errorf("%q: %q, want %q", in, got, want)
		}
	}
}
