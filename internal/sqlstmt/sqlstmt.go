// Package sqlstmt prepares a store's statements together and closes them
// together.
package sqlstmt

import (
	"context"
	"database/sql"
)

// Prepare prepares each query into the statement its key points at and
// returns them all, for Close. On an error it closes those it prepared.
func Prepare(ctx context.Context, db *sql.DB, queries map[**sql.Stmt]string) ([]*sql.Stmt, error) {
	all := make([]*sql.Stmt, 0, len(queries))
	for dst, query := range queries {
		stmt, err := db.PrepareContext(ctx, query)
		if err != nil {
			Close(all)
			return nil, err
		}
		*dst = stmt
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
