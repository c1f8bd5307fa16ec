package integration

import (
	"crypto/sha256"
	"encoding/hex"
)

// keyID mirrors tlsterm's public key fingerprint in its logs.
func keyID(k [32]byte) string {
	s := sha256.Sum256(k[:])
	return hex.EncodeToString(s[:4])
}
