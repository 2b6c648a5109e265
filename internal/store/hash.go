// Package store owns every SQL statement of the request path: it reads a
// request's credentials, permissions and room, and closes the room in one
// transaction that only one request can win. The rules that need no
// database (Verify, the room's decoding, the call metrics) are pure
// functions beside the statements.
package store

import (
	"crypto/sha256"
	"encoding/base64"
)

// hashedTokenLen is the length of a hashed login token: 32 bytes of SHA-256
// in padded standard base64.
const hashedTokenLen = 44

// HashLoginToken returns Rocket.Chat's hashLoginToken(token):
// base64(sha256(utf8(token))), standard alphabet with padding. Hashes copied
// from users.services.resume.loginTokens[].hashedToken match it unchanged.
func HashLoginToken(token string) string {
	var dst [hashedTokenLen]byte
	sum := sha256.Sum256([]byte(token))
	base64.StdEncoding.Encode(dst[:], sum[:])
	return string(dst[:])
}
