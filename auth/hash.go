// Package auth authenticates Rocket.Chat REST credentials (X-User-Id and
// X-Auth-Token) against the login tokens stored in MySQL and reads, in the
// same query, the permissions that the room.close route needs.
package auth

import (
	"crypto/sha256"
	"encoding/base64"
)

// HashedTokenLen is the length of a hashed login token: 32 bytes of SHA-256
// in padded standard base64.
const HashedTokenLen = 44

// HashLoginToken returns Rocket.Chat's hashLoginToken(token):
// base64(sha256(utf8(token))), standard alphabet with padding. Hashes copied
// from users.services.resume.loginTokens[].hashedToken match it unchanged.
func HashLoginToken(token string) string {
	var dst [HashedTokenLen]byte
	sum := sha256.Sum256([]byte(token))
	base64.StdEncoding.Encode(dst[:], sum[:])
	return string(dst[:])
}
