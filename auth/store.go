package auth

import (
	"context"
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

// Store looks credentials up with a statement prepared once per pool.
type Store struct {
	stmt *sql.Stmt
	now  func() time.Time
}

// New prepares the lookup on db.
func New(ctx context.Context, db *sql.DB) (*Store, error) {
	stmt, err := db.PrepareContext(ctx, lookupSQL)
	if err != nil {
		return nil, err
	}
	return &Store{stmt: stmt, now: time.Now}, nil
}

// Close releases the prepared statement.
func (s *Store) Close() error { return s.stmt.Close() }

// Authenticate returns the user that userID and token name, ErrUnauthorized
// when they name none, or the resume token is older than loginExpiration
// (zero: never expires), or a database error.
func (s *Store) Authenticate(ctx context.Context, userID, token string, loginExpiration time.Duration) (User, error) {
	// An id that is not UTF-8 cannot be stored, so it names nobody; MySQL 8
	// would reject it as a parameter rather than match nothing.
	if userID == "" || token == "" || !utf8.ValidString(userID) {
		return User{}, ErrUnauthorized
	}
	hashed := HashLoginToken(token)
	var (
		storedUserID, storedHash, tokenType string
		createdAt                           time.Time
		username, name                      sql.NullString
		u                                   = User{ID: userID}
	)
	err := s.stmt.QueryRowContext(ctx, PermissionInboundVoipCalls, PermissionBypassRateLimitAPI, userID, hashed).
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
	if tokenType != TokenTypePersonalAccessToken && loginExpiration > 0 &&
		!s.now().Before(createdAt.Add(loginExpiration)) {
		return User{}, ErrUnauthorized
	}
	u.Username, u.Name = username.String, name.String
	return u, nil
}

// RolesGranting counts the roles that grant permission, for operators'
// checks (no role granting inbound-voip-calls means nobody can close rooms).
func RolesGranting(ctx context.Context, db *sql.DB, permission string) (int, error) {
	var n int
	err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM permission_roles WHERE permission = ?", permission).Scan(&n)
	return n, err
}
