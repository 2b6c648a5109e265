package auth

import (
	"context"
	"crypto/subtle"
	"database/sql"
	"errors"
	"time"
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

// One round trip answers authentication and both permission checks: the
// token row is found by its primary key, and the permission flags are two
// EXISTS probes over primary keys.
const lookupSQL = `SELECT t.user_id, t.hashed_token, t.type, t.created_at, u.username, u.name,
  EXISTS (SELECT 1 FROM user_roles ur JOIN permission_roles pr ON pr.role = ur.role
          WHERE ur.user_id = t.user_id AND pr.permission = ?),
  EXISTS (SELECT 1 FROM user_roles ur JOIN permission_roles pr ON pr.role = ur.role
          WHERE ur.user_id = t.user_id AND pr.permission = ?)
FROM user_login_tokens t LEFT JOIN users u ON u.id = t.user_id
WHERE t.user_id = ? AND t.hashed_token = ?`

// Authenticator looks credentials up with a statement prepared once.
type Authenticator struct {
	stmt            *sql.Stmt
	loginExpiration time.Duration
	now             func() time.Time
}

// NewAuthenticator prepares the lookup on db. Resume tokens older than
// loginExpiration are rejected; zero means they never expire.
func NewAuthenticator(ctx context.Context, db *sql.DB, loginExpiration time.Duration) (*Authenticator, error) {
	stmt, err := db.PrepareContext(ctx, lookupSQL)
	if err != nil {
		return nil, err
	}
	return &Authenticator{stmt: stmt, loginExpiration: loginExpiration, now: time.Now}, nil
}

// Close releases the prepared statement.
func (a *Authenticator) Close() error { return a.stmt.Close() }

// Authenticate returns the user that userID and token name, ErrUnauthorized
// when they name none (or the token expired), or a database error.
func (a *Authenticator) Authenticate(ctx context.Context, userID, token string) (User, error) {
	if userID == "" || token == "" {
		return User{}, ErrUnauthorized
	}
	hashed := HashLoginToken(token)
	var (
		storedUserID, storedHash, tokenType string
		createdAt                           time.Time
		username, name                      sql.NullString
		u                                   = User{ID: userID}
	)
	err := a.stmt.QueryRowContext(ctx, PermissionInboundVoipCalls, PermissionBypassRateLimitAPI, userID, hashed).
		Scan(&storedUserID, &storedHash, &tokenType, &createdAt, &username, &name, &u.CanCloseRooms, &u.BypassRateLimit)
	if errors.Is(err, sql.ErrNoRows) {
		return User{}, ErrUnauthorized
	}
	if err != nil {
		return User{}, err
	}
	// The database compares with a PAD SPACE collation; insist on the exact
	// bytes here, in constant time for the secret-derived value.
	if storedUserID != userID || subtle.ConstantTimeCompare([]byte(storedHash), []byte(hashed)) != 1 {
		return User{}, ErrUnauthorized
	}
	if tokenType != TokenTypePersonalAccessToken && a.loginExpiration > 0 &&
		!a.now().Before(createdAt.Add(a.loginExpiration)) {
		return User{}, ErrUnauthorized
	}
	u.Username, u.Name = username.String, name.String
	return u, nil
}
