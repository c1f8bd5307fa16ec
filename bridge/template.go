package bridge

import (
	"errors"
	"regexp"
	"strings"
)

// validDevice is the set of device ids edgeshim accepts. Nothing outside it
// ever reaches an MQTT topic: no "/", "+", "#", NUL or control characters.
var validDevice = regexp.MustCompile(`^[A-Za-z0-9._:-]{1,128}$`)

// ValidDeviceID reports whether id may name a device. Ids made only of
// dots (".", "..", ...) are refused: they would be path segments with a
// meaning wherever an id lands in a URL (a WebSocket backend's) or a path.
func ValidDeviceID(id string) bool {
	return validDevice.MatchString(id) && strings.Trim(id, ".") != ""
}

// ErrTemplate is returned for a malformed template.
var ErrTemplate = errors.New("bad template")

// pathTemplate matches request paths such as "/devices/{device}/commands"
// or a legacy "/api/updates". {device} stands for exactly one path segment.
type pathTemplate struct {
	prefix, suffix string
	hasDevice      bool
}

func compilePath(s string) (pathTemplate, error) {
	if !strings.HasPrefix(s, "/") {
		return pathTemplate{}, ErrTemplate
	}
	i := strings.Index(s, "{device}")
	if i < 0 {
		return pathTemplate{prefix: s}, nil
	}
	pre, suf := s[:i], s[i+len("{device}"):]
	if strings.Contains(suf, "{device}") || !strings.HasSuffix(pre, "/") || (suf != "" && !strings.HasPrefix(suf, "/")) {
		return pathTemplate{}, ErrTemplate
	}
	return pathTemplate{prefix: pre, suffix: suf, hasDevice: true}, nil
}

// match returns the {device} segment of path ("" when the template has
// none) and whether path matches. The segment is returned as sent; the
// caller validates it (a bad id is a 400, not a 404).
func (t pathTemplate) match(path string) (device string, ok bool) {
	if !t.hasDevice {
		return "", path == t.prefix
	}
	if !strings.HasPrefix(path, t.prefix) || !strings.HasSuffix(path, t.suffix) || len(path) < len(t.prefix)+len(t.suffix)+1 {
		return "", false
	}
	seg := path[len(t.prefix) : len(path)-len(t.suffix)]
	if strings.Contains(seg, "/") {
		return "", false
	}
	return seg, true
}

// matchAck matches "{poll path}/{id}/ack" and returns device and id.
func (t pathTemplate) matchAck(path string) (device, id string, ok bool) {
	rest, found := strings.CutSuffix(path, "/ack")
	if !found {
		return "", "", false
	}
	j := strings.LastIndexByte(rest, '/')
	if j < 0 {
		return "", "", false
	}
	id = rest[j+1:]
	if id == "" {
		return "", "", false
	}
	device, ok = t.match(rest[:j])
	return device, id, ok
}

// topic fills {device} in an MQTT topic template. The id must already be
// valid (ValidDeviceID).
func topic(tmpl, device string) string { return strings.ReplaceAll(tmpl, "{device}", device) }
