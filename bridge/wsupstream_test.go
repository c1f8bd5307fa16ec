package bridge

import (
	"errors"
	"strings"
	"testing"

	"github.com/gorilla/websocket"
)

func TestParseBackendFrame(t *testing.T) {
	for _, tc := range []struct {
		name    string
		mt      int
		data    string
		id      string // "" with ok: no command
		payload string
		ok      bool
	}{
		{"command", websocket.TextMessage, `{"id":"c1","topic":"t","payload":"open"}`, "c1", "open", true},
		{"base64", websocket.TextMessage, `{"id":"c2","payload":"AAE=","encoding":"base64"}`, "c2", "\x00\x01", true},
		{"empty object", websocket.TextMessage, `{}`, "", "", true},
		{"ack ignored", websocket.TextMessage, `{"ack":"x"}`, "", "", true},
		{"binary", websocket.BinaryMessage, `{"id":"c1"}`, "", "", false},
		{"not json", websocket.TextMessage, `open`, "", "", false},
		{"no id", websocket.TextMessage, `{"payload":"x"}`, "", "", false},
		{"id with space", websocket.TextMessage, `{"id":"a b","payload":"x"}`, "", "", false},
		{"id too long", websocket.TextMessage, `{"id":"` + strings.Repeat("a", 129) + `"}`, "", "", false},
		{"bad base64", websocket.TextMessage, `{"id":"c","payload":"!!","encoding":"base64"}`, "", "", false},
		{"unknown encoding", websocket.TextMessage, `{"id":"c","payload":"x","encoding":"gzip"}`, "", "", false},
	} {
		c, err := parseBackendFrame(tc.mt, []byte(tc.data))
		if (err == nil) != tc.ok {
			t.Errorf("%s: err = %v, want ok=%v", tc.name, err, tc.ok)
			continue
		}
		if err != nil {
			if !errors.Is(err, errBadFrame) {
				t.Errorf("%s: %v is not errBadFrame", tc.name, err)
			}
			continue
		}
		switch {
		case tc.id == "" && c != nil:
			t.Errorf("%s: got command %+v, want none", tc.name, c)
		case tc.id != "" && (c == nil || c.id != tc.id || string(c.payload) != tc.payload):
			t.Errorf("%s: got %+v, want id %q payload %q", tc.name, c, tc.id, tc.payload)
		}
	}
}

// FuzzParseBackendFrame: any frame is either refused with errBadFrame or
// yields a command with a bounded, printable id.
func FuzzParseBackendFrame(f *testing.F) {
	for _, s := range []string{`{"id":"c1","payload":"x"}`, `{"id":"c","payload":"AAE=","encoding":"base64"}`, `{}`, `{"id":""}`, `[`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data string) {
		c, err := parseBackendFrame(websocket.TextMessage, []byte(data))
		if err != nil {
			if !errors.Is(err, errBadFrame) {
				t.Fatalf("error %v is not errBadFrame", err)
			}
			return
		}
		if c != nil && (c.id == "" || len(c.id) > maxCommandID || !printable(c.id)) {
			t.Fatalf("accepted id %q", c.id)
		}
	})
}
