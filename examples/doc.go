// Package examples holds runnable configurations for each use of edgeshim,
// each with a README; its test keeps every example valid.
package examples
