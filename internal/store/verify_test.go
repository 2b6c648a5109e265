package store

import (
	"database/sql"
	"errors"
	"strings"
	"testing"
	"time"
)

// Verify decides what the credentials row means, byte for byte: the
// database matched it under a PAD SPACE, case-insensitive collation, so a
// row it returns may differ from the request in trailing spaces or case.
func TestVerify(t *testing.T) {
	const userID = "agent1"
	hashed := HashLoginToken("secret")
	created := time.Date(2026, 9, 1, 12, 0, 0, 0, time.UTC)
	const expiration = 90 * 24 * time.Hour
	expiry := created.Add(expiration)
	row := func(mod func(*Credentials)) Credentials {
		c := Credentials{
			Found: true, UserID: userID, HashedToken: hashed, TokenType: TokenTypeResume, CreatedAt: created,
			Username: sql.NullString{String: "agent.one", Valid: true}, Name: sql.NullString{String: "Agent One", Valid: true},
			CanCloseRooms: true,
		}
		if mod != nil {
			mod(&c)
		}
		return c
	}
	wantUser := User{ID: userID, Username: "agent.one", Name: "Agent One", CanCloseRooms: true}

	cases := []struct {
		name       string
		c          Credentials
		userID     string // asked for; default userID
		hashed     string // asked for; default hashed
		expiration time.Duration
		now        time.Time
		want       *User // nil: ErrUnauthorized
	}{
		{name: "the row", c: row(nil), expiration: expiration, now: created.Add(time.Hour), want: &wantUser},
		{name: "no row", c: Credentials{}, expiration: expiration, now: created},
		{name: "asked with a trailing space in the user id", c: row(nil), userID: userID + " ", expiration: expiration, now: created},
		{name: "the row's user id has a trailing space", c: row(func(c *Credentials) { c.UserID = userID + " " }), expiration: expiration, now: created},
		{name: "the user id differs in case", c: row(func(c *Credentials) { c.UserID = "Agent1" }), expiration: expiration, now: created},
		{name: "asked with a trailing space in the hash", c: row(nil), hashed: hashed + " ", expiration: expiration, now: created},
		{name: "the row's hash has a trailing space", c: row(func(c *Credentials) { c.HashedToken = hashed + " " }), expiration: expiration, now: created},
		{name: "the hash differs in case", c: row(func(c *Credentials) { c.HashedToken = strings.ToUpper(hashed) }), expiration: expiration, now: created},
		{name: "the hash is a prefix", c: row(func(c *Credentials) { c.HashedToken = hashed[:43] }), expiration: expiration, now: created},
		{name: "an empty hash on both sides", c: row(func(c *Credentials) { c.HashedToken = "" }), hashed: "\x00", expiration: expiration, now: created},
		{name: "resume token just before its expiry", c: row(nil), expiration: expiration, now: expiry.Add(-time.Nanosecond), want: &wantUser},
		{name: "resume token at its expiry", c: row(nil), expiration: expiration, now: expiry},
		{name: "resume token after its expiry", c: row(nil), expiration: expiration, now: expiry.Add(time.Hour)},
		{name: "resume token with login_expiration 0 never expires", c: row(nil), expiration: 0, now: created.AddDate(30, 0, 0), want: &wantUser},
		{name: "personal access token never expires", c: row(func(c *Credentials) { c.TokenType = TokenTypePersonalAccessToken }),
			expiration: expiration, now: created.AddDate(30, 0, 0), want: &wantUser},
		{name: "an unknown token type expires like a resume token", c: row(func(c *Credentials) { c.TokenType = "personalaccesstoken" }),
			expiration: expiration, now: expiry},
		{name: "no users row: no username or name", c: row(func(c *Credentials) { c.Username, c.Name = sql.NullString{}, sql.NullString{} }),
			expiration: expiration, now: created, want: &User{ID: userID, CanCloseRooms: true}},
		{name: "permissions as read", c: row(func(c *Credentials) { c.CanCloseRooms, c.BypassRateLimit = false, true }),
			expiration: expiration, now: created, want: &User{ID: userID, Username: "agent.one", Name: "Agent One", BypassRateLimit: true}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			askID, askHash := userID, hashed
			if c.userID != "" {
				askID = c.userID
			}
			if c.hashed != "" {
				askHash = c.hashed
			}
			got, err := Verify(c.c, askID, askHash, c.expiration, c.now)
			if c.want == nil {
				if !errors.Is(err, ErrUnauthorized) || got != (User{}) {
					t.Fatalf("got %+v, %v; want ErrUnauthorized", got, err)
				}
				return
			}
			if err != nil || got != *c.want {
				t.Fatalf("got %+v, %v; want %+v", got, err, *c.want)
			}
		})
	}
}

func TestAskable(t *testing.T) {
	for _, c := range []struct {
		userID, token string
		want          bool
	}{
		{"agent1", "secret", true},
		{"", "secret", false},
		{"agent1", "", false},
		{"agent\xff1", "secret", false}, // not UTF-8: names nobody
		{"agent1", "secret\xff", true},  // the token is hashed, any bytes will do
	} {
		if got := Askable(c.userID, c.token); got != c.want {
			t.Errorf("Askable(%q, %q) = %v, want %v", c.userID, c.token, got, c.want)
		}
	}
}
