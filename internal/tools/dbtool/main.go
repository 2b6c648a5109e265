// Command dbtool is what the project's scripts need of a MySQL client, so
// that they need none installed: wait for a server, create a database, run
// a SQL file.
//
//	dbtool wait     <dsn> [seconds]
//	dbtool createdb <dsn> <name>
//	dbtool exec     <dsn> <file.sql>
//	dbtool withdb   <dsn> <name>    (prints the DSN with its database set)
//	dbtool query    <dsn> <select>  (prints the rows, one column a line)
package main

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
)

func main() {
	if len(os.Args) < 3 {
		fail("usage: dbtool wait|createdb|exec <dsn> [arg]")
	}
	cmd, dsn := os.Args[1], os.Args[2]
	cfg, err := mysql.ParseDSN(dsn)
	if err != nil {
		fail("invalid DSN: %v", err)
	}
	cfg.Timeout = 2 * time.Second
	db, err := sql.Open("mysql", cfg.FormatDSN())
	if err != nil {
		fail("%v", err)
	}
	defer db.Close()
	ctx := context.Background()
	switch cmd {
	case "wait":
		secs := 1
		if len(os.Args) > 3 {
			secs, _ = strconv.Atoi(os.Args[3])
		}
		deadline := time.Now().Add(time.Duration(secs) * time.Second)
		for {
			err = db.PingContext(ctx)
			if err == nil {
				return
			}
			if time.Now().After(deadline) {
				fail("no MySQL server at %s: %v", cfg.Addr, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	case "createdb":
		name := arg(3)
		if strings.ContainsAny(name, "`;' \"") {
			fail("bad database name %q", name)
		}
		if _, err := db.ExecContext(ctx, "CREATE DATABASE IF NOT EXISTS `"+name+"` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"); err != nil {
			fail("%v", err)
		}
	case "withdb":
		cfg.DBName = arg(3)
		cfg.Timeout = 0
		fmt.Println(cfg.FormatDSN())
	case "query":
		rows, err := db.QueryContext(ctx, arg(3))
		if err != nil {
			fail("%v", err)
		}
		defer rows.Close()
		cols, _ := rows.Columns()
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		for rows.Next() {
			if err := rows.Scan(ptrs...); err != nil {
				fail("%v", err)
			}
			for i, c := range cols {
				v := "NULL"
				if vals[i].Valid {
					v = vals[i].String
				}
				fmt.Printf("%22s: %s\n", c, v)
			}
			fmt.Println()
		}
	case "exec":
		src, err := os.ReadFile(arg(3))
		if err != nil {
			fail("%v", err)
		}
		for _, stmt := range strings.Split(string(src), ";\n") {
			if isBlank(stmt) {
				continue
			}
			if _, err := db.ExecContext(ctx, stmt); err != nil {
				fail("%v\nin: %s", err, stmt)
			}
		}
	default:
		fail("unknown command %q", cmd)
	}
}

func isBlank(stmt string) bool {
	for _, line := range strings.Split(stmt, "\n") {
		if l := strings.TrimSpace(line); l != "" && !strings.HasPrefix(l, "--") {
			return false
		}
	}
	return true
}

func arg(i int) string {
	if len(os.Args) <= i {
		fail("missing argument %d", i)
	}
	return os.Args[i]
}

func fail(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "dbtool: "+format+"\n", a...)
	os.Exit(1)
}
