package proxy

import (
	"net/http"

	"github.com/edgeshim/edgeshim/limits"
)

// writeError writes a short JSON error body: {"error": "..."}.
func writeError(w http.ResponseWriter, code int, msg string) { limits.WriteError(w, code, msg) }
