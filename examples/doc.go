// Package examples holds runnable configurations for each use of edgeshim,
// each with a README. Its tests keep every example valid and run each one
// as its README says (the real binary, test certificates, a real
// mosquitto, the documented requests) checking the documented answers.
package examples
