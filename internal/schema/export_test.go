package schema

import (
	"context"
	"database/sql"
)

// MigrateWithoutLock is Migrate without the named lock, as on one node of a
// cluster whose other nodes' locks it cannot see.
func MigrateWithoutLock(ctx context.Context, db *sql.DB) ([]int, error) {
	return migrate(ctx, db, false)
}

// Load is load, for tests of broken migration sets.
var Load = load
