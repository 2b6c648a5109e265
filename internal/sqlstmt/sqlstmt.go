// Package sqlstmt prepares a store's statements together and closes them
// together.
package sqlstmt

import (
	"context"
	"database/sql"
)

// Query is one statement to prepare, and where to put it.
type Query struct {
	Into **sql.Stmt
	SQL  string
}

// Prepare prepares each query into its destination and returns them all,
// for Close. On an error it closes those it prepared.
func Prepare(ctx context.Context, db *sql.DB, queries ...Query) ([]*sql.Stmt, error) {
	all := make([]*sql.Stmt, 0, len(queries))
	for _, q := range queries {
		stmt, err := db.PrepareContext(ctx, q.SQL)
		if err != nil {
			Close(all)
			return nil, err
		}
		*q.Into = stmt
		all = append(all, stmt)
	}
	return all, nil
}

// Close releases prepared statements.
func Close(stmts []*sql.Stmt) {
	for _, st := range stmts {
		st.Close()
	}
}
