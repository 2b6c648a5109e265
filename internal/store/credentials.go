package store

import (
	"crypto/subtle"
	"database/sql"
	"errors"
	"time"
	"unicode/utf8"
)

// Permission names, as Rocket.Chat spells them.
const (
	PermissionInboundVoipCalls   = "inbound-voip-calls"
	PermissionBypassRateLimitAPI = "api-bypass-rate-limit"
)

// Token types stored in user_login_tokens.type.
const (
	TokenTypeResume              = "resume"
	TokenTypePersonalAccessToken = "personalAccessToken"
)

// ErrUnauthorized means the credentials do not name a valid login token.
var ErrUnauthorized = errors.New("not logged in")

// User is an authenticated user with the permissions this route cares about.
type User struct {
	ID       string
	Username string
	Name     string
	// CanCloseRooms: some role of the user grants inbound-voip-calls.
	CanCloseRooms bool
	// BypassRateLimit: some role of the user grants api-bypass-rate-limit.
	BypassRateLimit bool
}

// Credentials is the login-token row read for a request; Verify decides
// what it means.
type Credentials struct {
	Found                          bool // false: no row, so no such token
	UserID, HashedToken, TokenType string
	CreatedAt                      time.Time
	Username, Name                 sql.NullString
	CanCloseRooms, BypassRateLimit bool
}

func (c *Credentials) scanTargets() []any {
	return []any{&c.UserID, &c.HashedToken, &c.TokenType, &c.CreatedAt, &c.Username, &c.Name, &c.CanCloseRooms, &c.BypassRateLimit}
}

// Askable reports whether userID and token can name a login token at all,
// so that a request without credentials costs no query. An id that is not
// UTF-8 cannot be stored, so it names nobody (and MySQL 8 would reject it as
// a parameter rather than match nothing).
func Askable(userID, token string) bool {
	return userID != "" && token != "" && utf8.ValidString(userID)
}

// Verify decides whether the credentials found for userID and the token
// whose hash is hashedToken authenticate them at now: ErrUnauthorized, or
// the user. A resume token expires loginExpiration after its creation (zero:
// never); a personal access token never does.
func Verify(c Credentials, userID, hashedToken string, loginExpiration time.Duration, now time.Time) (User, error) {
	if !c.Found {
		return User{}, ErrUnauthorized
	}
	// The database compares with a PAD SPACE collation; insist on the exact
	// bytes here, in constant time for the secret-derived value.
	if c.UserID != userID || subtle.ConstantTimeCompare([]byte(c.HashedToken), []byte(hashedToken)) != 1 {
		return User{}, ErrUnauthorized
	}
	if c.TokenType != TokenTypePersonalAccessToken && loginExpiration > 0 &&
		!now.Before(c.CreatedAt.Add(loginExpiration)) {
		return User{}, ErrUnauthorized
	}
	return User{ID: userID, Username: c.Username.String, Name: c.Name.String,
		CanCloseRooms: c.CanCloseRooms, BypassRateLimit: c.BypassRateLimit}, nil
}
