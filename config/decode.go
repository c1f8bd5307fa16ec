package config

import (
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"
)

// walker goes through the YAML node tree beside the Go type of Config before
// it is decoded. In one pass it expands ${ENV} (by the type of the field the
// value lands in), and reports every unknown key, duplicate key and wrongly
// typed value with its field path and line. It removes what it reports from
// the tree, so that the rest still decodes and can be validated: one run
// shows every problem in a file.
type walker struct {
	lookup LookupFunc
	errs   errs
	// lines maps the field paths present in the file to their line.
	lines map[string]int
	// bad are the field paths reported here; validation errors about them
	// (a removed value, then defaulted) would only repeat the problem.
	bad []string
	// seen are the nodes already walked: an alias walks its anchor's node
	// again, and a value must be expanded only once ("$${X}" is "${X}").
	seen map[*yaml.Node]bool
	// budget bounds the nodes walked, aliases included (an alias bomb).
	budget int
}

// maxNodes bounds how many nodes (aliases counted each time) a config may
// have; far above any real configuration.
const maxNodes = 100_000

func newWalker(lookup LookupFunc) *walker {
	return &walker{lookup: lookup, lines: map[string]int{}, seen: map[*yaml.Node]bool{}, budget: maxNodes}
}

func (w *walker) fail(path string, line int, format string, args ...any) {
	w.errs = append(w.errs, &FieldError{Path: orTop(path), Line: line, Msg: fmt.Sprintf(format, args...)})
	w.bad = append(w.bad, path)
}

var (
	unmarshalerType = reflect.TypeFor[yaml.Unmarshaler]()
	durationType    = reflect.TypeFor[Duration]()
	sizeType        = reflect.TypeFor[Size]()
)

// walk checks n as the value of a field of type t at path. It returns false
// when n is to be removed from its parent.
func (w *walker) walk(n *yaml.Node, t reflect.Type, path string) bool {
	if w.budget--; w.budget < 0 {
		if w.budget == -1 {
			w.fail(path, n.Line, "document too large: more than %d nodes (aliases counted each time)", maxNodes)
		}
		return false
	}
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if _, ok := w.lines[path]; !ok && path != "" {
		w.lines[path] = n.Line
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if reflect.PointerTo(t).Implements(unmarshalerType) {
		return w.scalar(n, t, path)
	}
	switch t.Kind() {
	case reflect.Struct, reflect.Map, reflect.Slice:
	case reflect.Interface:
		return true // any value; the decoder takes it as it is
	default:
		return w.scalar(n, t, path)
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		return true // "tls:" with nothing under it
	}
	switch {
	case t.Kind() == reflect.Slice && n.Kind == yaml.SequenceNode:
		kept := n.Content[:0]
		for i, c := range n.Content {
			if w.walk(c, t.Elem(), fmt.Sprintf("%s[%d]", path, i)) {
				kept = append(kept, c)
			}
		}
		n.Content = kept
		return true
	case t.Kind() == reflect.Map && n.Kind == yaml.MappingNode:
		w.mapping(n, path, func(string) (reflect.Type, bool) { return t.Elem(), true }, nil)
		return true
	case t.Kind() == reflect.Struct && n.Kind == yaml.MappingNode:
		fields, names := structFields(t)
		w.mapping(n, path, func(k string) (reflect.Type, bool) { ft, ok := fields[k]; return ft, ok }, names)
		return true
	}
	w.fail(path, n.Line, "must be %s", describe(t))
	return false
}

// mapping walks the pairs of a mapping; field gives the type of a key's
// value, or false for an unknown key. names are the known keys (nil for a
// map, whose keys are free).
func (w *walker) mapping(n *yaml.Node, path string, field func(string) (reflect.Type, bool), names []string) {
	first := map[string]int{}
	kept := n.Content[:0]
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind == yaml.AliasNode && k.Alias != nil {
			k = k.Alias
		}
		if k.Kind != yaml.ScalarNode {
			w.fail(path, k.Line, "keys must be plain names")
			continue
		}
		if !w.seen[k] {
			w.seen[k] = true
			if _, ok := w.expand(k, path); ok {
				k.Tag, k.Style = "!!str", 0
			}
		}
		p := join(path, k.Value)
		if line, dup := first[k.Value]; dup {
			w.fail(p, k.Line, "duplicate key (first at line %d)", line)
			continue
		}
		first[k.Value] = k.Line
		ft, ok := field(k.Value)
		if !ok {
			w.fail(p, k.Line, "unknown field%s", suggest(k.Value, names))
			continue
		}
		w.lines[p] = k.Line
		if w.walk(v, ft, p) {
			kept = append(kept, k, v)
		}
	}
	n.Content = kept
}

// scalar checks a value for a field of type t (a scalar type or a type with
// its own UnmarshalYAML) by decoding it alone.
func (w *walker) scalar(n *yaml.Node, t reflect.Type, path string) bool {
	var vars []string
	if n.Kind == yaml.ScalarNode && !w.seen[n] {
		w.seen[n] = true
		var ok bool
		if vars, ok = w.expand(n, path); !ok {
			return false
		}
		if vars != nil {
			// The expanded text is decoded as if written there, unquoted:
			// "max_conns: ${MAXC}" is an integer. A string field takes it
			// verbatim, whatever it looks like ("null", "0x1", "true").
			if t.Kind() == reflect.String {
				n.Tag, n.Style = "!!str", 0
			} else {
				n.Tag, n.Style = "", 0
			}
		}
	}
	msg := decodeProblem(n, t)
	if msg == "" {
		return true
	}
	if vars != nil {
		// The value is not shown: an environment variable may hold a
		// secret, and a wrong name is the likelier mistake.
		w.fail(path, n.Line, "${%s} is not %s", strings.Join(vars, "}${"), describe(t))
	} else {
		w.fail(path, n.Line, "%s", msg)
	}
	return false
}

// decodeProblem decodes n into a fresh value of type t and says what is
// wrong, or "".
func decodeProblem(n *yaml.Node, t reflect.Type) string {
	if n.Kind == yaml.ScalarNode {
		switch t {
		case durationType:
			if _, err := ParseDuration(n.Value); err != nil {
				return err.Error()
			}
			return ""
		case sizeType:
			if _, err := ParseSize(n.Value); err != nil {
				return err.Error()
			}
			return ""
		}
	}
	custom := reflect.PointerTo(t).Implements(unmarshalerType)
	if n.Kind != yaml.ScalarNode && !custom {
		return "must be " + describe(t) // not decoded: it may be large
	}
	err := n.Decode(reflect.New(t).Interface())
	if err == nil {
		return ""
	}
	var te *yaml.TypeError
	if n.Kind == yaml.ScalarNode && errors.As(err, &te) {
		return fmt.Sprintf("must be %s (got %q)", describe(t), n.Value)
	}
	return err.Error()
}

func describe(t reflect.Type) string {
	switch t {
	case durationType:
		return `a duration like "10s", "5m" or "1h"`
	case sizeType:
		return `a size like "1048576", "64KiB" or "1MiB"`
	}
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return "an integer"
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a non-negative integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Slice:
		return "a list"
	case reflect.Struct, reflect.Map:
		return "a mapping"
	}
	return "a " + t.String()
}

var envRe = regexp.MustCompile(`\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(:-([^}]*))?\}`)

// expand replaces ${NAME}, ${NAME:-default} and $$ in the scalar n. It
// returns the names of the variables used (nil when there were none), and
// false when one of them is not set and has no default (reported).
func (w *walker) expand(n *yaml.Node, path string) ([]string, bool) {
	if !strings.Contains(n.Value, "$") {
		return nil, true
	}
	var vars, unset []string
	n.Value = envRe.ReplaceAllStringFunc(n.Value, func(m string) string {
		if m == "$$" {
			return "$"
		}
		sub := envRe.FindStringSubmatch(m)
		vars = append(vars, sub[1])
		if v, ok := w.lookup(sub[1]); ok {
			return v
		}
		if sub[2] != "" {
			return sub[3]
		}
		unset = append(unset, sub[1])
		return ""
	})
	for _, name := range unset {
		w.fail(path, n.Line, "environment variable %s is not set (${%s:-default} gives a default)", name, name)
	}
	return vars, len(unset) == 0
}

// structFields maps a struct's YAML keys to their types; names lists the
// keys in declaration order.
func structFields(t reflect.Type) (fields map[string]reflect.Type, names []string) {
	fields = map[string]reflect.Type{}
	for i := range t.NumField() {
		f := t.Field(i)
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if opts == "inline" && f.Type.Kind() == reflect.Struct {
			inner, innerNames := structFields(f.Type)
			for _, n := range innerNames {
				fields[n] = inner[n]
			}
			names = append(names, innerNames...)
			continue
		}
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		fields[name] = f.Type
		names = append(names, name)
	}
	return fields, names
}

// suggest names the known key closest to a mistyped one, or lists them.
func suggest(key string, names []string) string {
	if len(names) == 0 {
		return ""
	}
	best, bestD := "", 3
	for _, n := range names {
		if d := editDistance(strings.ToLower(key), n); d < bestD {
			best, bestD = n, d
		}
	}
	if best != "" {
		return fmt.Sprintf(" (did you mean %q?)", best)
	}
	return " (known: " + strings.Join(names, ", ") + ")"
}

// editDistance is the Levenshtein distance, for keys of a few dozen bytes.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// line is the line of path in the file, or of its nearest ancestor there
// (a defaulted field's section); 0 when none is.
func (w *walker) line(path string) int {
	for path != "" {
		if l, ok := w.lines[path]; ok {
			return l
		}
		i := strings.LastIndexAny(path, ".[")
		if i < 0 {
			return 0
		}
		path = path[:i]
	}
	return 0
}

// reported says whether path, or a field above it, was already reported by
// the walk: its value was removed, so what validation says of it repeats
// the problem.
func (w *walker) reported(path string) bool {
	return slices.ContainsFunc(w.bad, func(b string) bool { return b == path || under(path, b) })
}

// under says whether path is a field below parent.
func under(path, parent string) bool {
	return parent != "" && strings.HasPrefix(path, parent) && len(path) > len(parent) &&
		(path[len(parent)] == '.' || path[len(parent)] == '[')
}
