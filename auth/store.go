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
// EXISTS probes over primary keys. CredentialsQuery lets a caller add the
// columns and joins of its own to the same round trip (roomstore reads the
// room with it).
const (
	credentialColumns = `t.user_id, t.hashed_token, t.type, t.created_at, u.username, u.name,
  EXISTS (SELECT 1 FROM user_roles ur JOIN permission_roles pr ON pr.role = ur.role
          WHERE ur.user_id = t.user_id AND pr.permission = ?),
  EXISTS (SELECT 1 FROM user_roles ur JOIN permission_roles pr ON pr.role = ur.role
          WHERE ur.user_id = t.user_id AND pr.permission = ?)`
	credentialFrom  = `FROM user_login_tokens t LEFT JOIN users u ON u.id = t.user_id`
	credentialWhere = `WHERE t.user_id = ? AND t.hashed_token = ?`
)

// CredentialsQuery is the credentials lookup with more columns and more
// joins; pass its arguments with QueryArgs.
func CredentialsQuery(columns, joins string) string {
	q := "SELECT " + credentialColumns
	if columns != "" {
		q += ",\n  " + columns
	}
	q += "\n" + credentialFrom
	if joins != "" {
		q += "\n" + joins
	}
	return q + "\n" + credentialWhere
}

// QueryArgs orders the arguments of a CredentialsQuery: the permissions,
// then those of the extra columns and joins, then the user and the token's
// hash.
func QueryArgs(userID, hashedToken string, joinArgs ...any) []any {
	args := make([]any, 0, 4+len(joinArgs))
	args = append(args, PermissionInboundVoipCalls, PermissionBypassRateLimitAPI)
	args = append(args, joinArgs...)
	return append(args, userID, hashedToken)
}

// Credentials is the row a CredentialsQuery found for a request.
type Credentials struct {
	Found                          bool // false: no row, so no such token
	UserID, HashedToken, TokenType string
	CreatedAt                      time.Time
	Username, Name                 sql.NullString
	CanCloseRooms, BypassRateLimit bool
}

// ScanTargets are the destinations of the credential columns, in order.
func (c *Credentials) ScanTargets() []any {
	return []any{&c.UserID, &c.HashedToken, &c.TokenType, &c.CreatedAt, &c.Username, &c.Name, &c.CanCloseRooms, &c.BypassRateLimit}
}

// Store looks credentials up with a statement prepared once per pool.
type Store struct {
	stmt *sql.Stmt
	now  func() time.Time
}

// New prepares the lookup on db.
func New(ctx context.Context, db *sql.DB) (*Store, error) {
	stmt, err := db.PrepareContext(ctx, CredentialsQuery("", ""))
	if err != nil {
		return nil, err
	}
	return &Store{stmt: stmt, now: time.Now}, nil
}

// Close releases the prepared statement.
func (s *Store) Close() error { return s.stmt.Close() }

// Askable reports whether userID and token can name a login token at all,
// so that a request without credentials costs no query. An id that is not
// UTF-8 cannot be stored, so it names nobody (and MySQL 8 would reject it as
// a parameter rather than match nothing).
func Askable(userID, token string) bool {
	return userID != "" && token != "" && utf8.ValidString(userID)
}

// Authenticate returns the user that userID and token name, ErrUnauthorized
// when they name none, or the resume token is older than loginExpiration
// (zero: never expires), or a database error.
func (s *Store) Authenticate(ctx context.Context, userID, token string, loginExpiration time.Duration) (User, error) {
	if !Askable(userID, token) {
		return User{}, ErrUnauthorized
	}
	hashed := HashLoginToken(token)
	c, err := s.Read(ctx, userID, hashed)
	if err != nil {
		return User{}, err
	}
	return s.Verify(c, userID, hashed, loginExpiration)
}

// Read looks up the credentials of userID and the token hashed as
// hashedToken; Verify then decides. No such token is not an error: the
// Credentials say Found false.
func (s *Store) Read(ctx context.Context, userID, hashedToken string) (Credentials, error) {
	var c Credentials
	err := s.stmt.QueryRowContext(ctx, QueryArgs(userID, hashedToken)...).Scan(c.ScanTargets()...)
	if errors.Is(err, sql.ErrNoRows) {
		return c, nil
	}
	c.Found = err == nil
	return c, err
}

// Verify decides whether the credentials found for userID and the token
// whose hash is hashedToken authenticate them: ErrUnauthorized, or the user.
func (s *Store) Verify(c Credentials, userID, hashedToken string, loginExpiration time.Duration) (User, error) {
	if !c.Found {
		return User{}, ErrUnauthorized
	}
	// The database compares with a PAD SPACE collation; insist on the exact
	// bytes here, in constant time for the secret-derived value.
	if c.UserID != userID || subtle.ConstantTimeCompare([]byte(c.HashedToken), []byte(hashedToken)) != 1 {
		return User{}, ErrUnauthorized
	}
	if c.TokenType != TokenTypePersonalAccessToken && loginExpiration > 0 &&
		!s.now().Before(c.CreatedAt.Add(loginExpiration)) {
		return User{}, ErrUnauthorized
	}
	return User{ID: userID, Username: c.Username.String, Name: c.Name.String,
		CanCloseRooms: c.CanCloseRooms, BypassRateLimit: c.BypassRateLimit}, nil
}

// RolesGranting counts the roles that grant permission, for operators'
// checks (no role granting inbound-voip-calls means nobody can close rooms).
func RolesGranting(ctx context.Context, db *sql.DB, permission string) (int, error) {
	var n int
	err := db.QueryRowContext(ctx, "SELECT COUNT(*) FROM permission_roles WHERE permission = ?", permission).Scan(&n)
	return n, err
}
