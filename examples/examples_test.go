package examples

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/edgeshim/edgeshim/config"
)

// notConfigs are the YAML files and folders under examples/ that are not
// edgeshim configurations (Prometheus rules, Kubernetes manifests, a
// compose file); deploy_test.go checks them.
var notConfigs = map[string]bool{"monitoring": true, "kubernetes": true, "compose/compose.yaml": true, "compose/tokens.yaml": true}

// TestExamplesValid keeps every example configuration valid, as
// `edgeshim validate` would judge it.
func TestExamplesValid(t *testing.T) {
	var files []string
	filepath.WalkDir(".", func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() && notConfigs[p] {
			return filepath.SkipDir
		}
		if err == nil && !d.IsDir() && strings.HasSuffix(p, ".yaml") && !notConfigs[p] {
			files = append(files, p)
		}
		return nil
	})
	if len(files) < 4 {
		t.Fatalf("found %d example configs, expected the reference and one per use", len(files))
	}
	env := map[string]string{"MQTT_PASSWORD": "example"}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		c, err := config.Parse(data, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
		if err != nil {
			t.Errorf("%s: %v", f, err)
			continue
		}
		if err := c.WithDefaults().Validate(); err != nil {
			t.Errorf("%s:\n%v", f, err)
		}
	}
}
