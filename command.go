package rocketchatvoip

import (
	"bufio"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/dbconnect"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/outbox"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/schema"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/store"
)

// dsnEnv is read when --dsn is not given, so that a password need not
// appear on a command line.
const dsnEnv = "ROCKETCHAT_VOIP_DSN"

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "rocketchat-voip",
		Usage: "migrate|check|outbox|hash-token [--dsn <dsn>]",
		Short: "Manage the rocketchat_voip module's MySQL schema and tokens",
		Long: `
Commands of the rocketchat_voip handler:

  migrate      apply the embedded schema migrations (--status: only show the version)
  check        verify that a database is ready for the gateway
  outbox       show the outbox's delivery status (status), or send events again (replay)
  hash-token   print Rocket.Chat's hash of a login token read from stdin

The DSN is taken from --dsn, or else from $` + dsnEnv + `.`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.AddCommand(migrateCommand(), checkCommand(), outboxCommand(), hashTokenCommand())
		},
	})
}

func addDSNFlag(c *cobra.Command) {
	c.Flags().String("dsn", "", "go-sql-driver/mysql DSN (default: $"+dsnEnv+")")
}

// openFromFlags opens the database named by --dsn or the environment.
func openFromFlags(c *cobra.Command) (*sql.DB, string, error) {
	dsn, _ := c.Flags().GetString("dsn")
	if dsn == "" {
		dsn = os.Getenv(dsnEnv)
	}
	if dsn == "" {
		return nil, "", fmt.Errorf("no DSN: pass --dsn or set %s", dsnEnv)
	}
	cfg, err := dbconnect.ParseDSN(dsn)
	if err != nil {
		return nil, "", err
	}
	db, err := dbconnect.Open(c.Context(), cfg)
	return db, cfg.String(), err
}

// withDatabase runs fn with the pool named by --dsn (or the environment),
// its description without credentials, and a context bounded by timeout.
func withDatabase(timeout time.Duration, fn func(ctx context.Context, c *cobra.Command, db *sql.DB, where string) error) func(*cobra.Command, []string) error {
	return func(c *cobra.Command, _ []string) error {
		db, where, err := openFromFlags(c)
		if err != nil {
			return err
		}
		defer db.Close()
		ctx, cancel := context.WithTimeout(c.Context(), timeout)
		defer cancel()
		return fn(ctx, c, db, where)
	}
}

func migrateCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "migrate [--dsn <dsn>] [--status]",
		Short: "Apply the embedded schema migrations (idempotent)",
		Args:  cobra.NoArgs,
		RunE: withDatabase(5*time.Minute, func(ctx context.Context, c *cobra.Command, db *sql.DB, where string) error {
			if status, _ := c.Flags().GetBool("status"); status {
				v, err := schema.Version(ctx, db)
				if err != nil {
					return err
				}
				fmt.Fprintf(c.OutOrStdout(), "%s: schema version %d, this build needs %d\n", where, v, schema.Latest())
				if v < schema.Latest() {
					return errors.New("schema is behind: run 'caddy rocketchat-voip migrate'")
				}
				return nil
			}
			applied, err := schema.Migrate(ctx, db)
			if err != nil {
				return err
			}
			if len(applied) == 0 {
				fmt.Fprintf(c.OutOrStdout(), "%s: schema already at version %d\n", where, schema.Latest())
			} else {
				fmt.Fprintf(c.OutOrStdout(), "%s: applied migrations %v, schema at version %d\n", where, applied, schema.Latest())
			}
			return nil
		}),
	}
	addDSNFlag(c)
	c.Flags().Bool("status", false, "only print the schema version; exit 1 if it is behind")
	return c
}

func checkCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "check [--dsn <dsn>]",
		Short: "Check that a database is ready: reachable, schema current, the close's procedure callable, permission rows present",
		Args:  cobra.NoArgs,
		RunE: withDatabase(time.Minute, func(ctx context.Context, c *cobra.Command, db *sql.DB, where string) error {
			// openFromFlags has connected: an unreachable database never gets
			// here (see unreachableProblem).
			writePath, problems := checkDatabase(ctx, db)
			if writePath != "" {
				fmt.Fprintln(c.OutOrStdout(), "closes are written by", writePath)
			}
			for _, p := range problems {
				fmt.Fprintln(c.OutOrStdout(), "problem:", p)
			}
			if len(problems) > 0 {
				return fmt.Errorf("%s: %d problem(s)", where, len(problems))
			}
			fmt.Fprintf(c.OutOrStdout(), "%s: ok (schema version %d)\n", where, schema.Latest())
			return nil
		}),
	}
	addDSNFlag(c)
	run := c.RunE
	c.RunE = func(c *cobra.Command, args []string) error {
		err := run(c, args)
		var away *dbconnect.UnreachableError
		if errors.As(err, &away) {
			fmt.Fprintf(c.OutOrStdout(), "problem: %v (Caddy would start without it: room.close answers 503 until a server answers)\n", away)
		}
		return err
	}
	return c
}

// checkDatabase lists what would stop the gateway from answering correctly,
// and says how it would write closes.
func checkDatabase(ctx context.Context, db *sql.DB) (writePath string, problems []string) {
	if err := schema.Check(ctx, db); err != nil {
		return "", []string{err.Error()}
	}
	// The gateway's own start: the statements prepared, the write path
	// chosen, EXECUTE on the procedure tried.
	st, err := store.New(ctx, db)
	if err != nil {
		problems = append(problems, fmt.Sprintf("the gateway would not start: %v", err))
	} else {
		path := st.WritePath()
		st.Close()
		writePath = path.String()
		if path.Engine.HasProcedures() && !path.Procedure {
			problems = append(problems, "closes would take the slower portable path: "+path.Why)
		}
	}
	for _, perm := range []string{store.PermissionInboundVoipCalls, store.PermissionBypassRateLimitAPI} {
		n, err := store.RolesGranting(ctx, db, perm)
		if err != nil {
			problems = append(problems, fmt.Sprintf("reading permission_roles: %v", err))
			break
		}
		if n == 0 {
			problems = append(problems, fmt.Sprintf("no role grants %q: nobody can use this route as intended (see permission_roles)", perm))
		}
	}
	return writePath, problems
}

func hashTokenCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "hash-token < token",
		Short: "Print Rocket.Chat's hash of a login token read from stdin (for user_login_tokens.hashed_token)",
		Long: `Reads one token from standard input (a trailing newline is dropped) and prints
base64(sha256(token)), the value Rocket.Chat stores as hashedToken. The token is
read from stdin so that it never appears in a shell history or process list.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			line, err := bufio.NewReader(c.InOrStdin()).ReadString('\n')
			if err != nil && !errors.Is(err, io.EOF) {
				return err
			}
			token := strings.TrimRight(line, "\r\n")
			if token == "" {
				return errors.New("no token on stdin")
			}
			fmt.Fprintln(c.OutOrStdout(), store.HashLoginToken(token))
			return nil
		},
	}
}

func outboxCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "outbox status|replay",
		Short: "Show or steer the delivery of the room_events outbox",
	}
	status := &cobra.Command{
		Use:   "status [--dsn <dsn>]",
		Short: "Print how many events are pending and parked, and the oldest pending",
		Args:  cobra.NoArgs,
		RunE: withDatabase(time.Minute, func(ctx context.Context, c *cobra.Command, db *sql.DB, where string) error {
			st, err := outbox.ReadStatus(ctx, db)
			if err != nil {
				return err
			}
			oldest := "none"
			if !st.OldestPending.IsZero() {
				oldest = fmt.Sprintf("%s (%s ago)", st.OldestPending.Format(time.RFC3339), time.Since(st.OldestPending).Round(time.Second))
			}
			fmt.Fprintf(c.OutOrStdout(), "%s: pending %d, parked %d, oldest pending %s\n", where, st.Pending, st.Parked, oldest)
			return nil
		}),
	}
	addDSNFlag(status)
	replay := &cobra.Command{
		Use:   "replay [--dsn <dsn>] [--parked] [--from <id>]",
		Short: "Make events deliverable again: the parked ones, or all from an id on",
		Long: `Makes events pending again, with their attempts reset, so that the
rocketchat_voip_outbox app delivers them once more:

  --parked      the parked events (those that failed too often)
  --from <id>   every event from this id on, delivered ones included
                (except those the outbox's retain has purged: then it says
                so, and exits 1 after replaying the rest)
  both          the parked events from this id on`,
		Args: cobra.NoArgs,
		RunE: withDatabase(time.Minute, func(ctx context.Context, c *cobra.Command, db *sql.DB, where string) error {
			parked, _ := c.Flags().GetBool("parked")
			from, _ := c.Flags().GetInt64("from")
			if !parked && !c.Flags().Changed("from") {
				return errors.New("say what to replay: --parked, --from <id>, or both")
			}
			n, err := outbox.Replay(ctx, db, parked, from)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "%s: %d event(s) will be delivered again\n", where, n)
			if parked {
				return nil // parked events are never purged
			}
			purged, err := outbox.PurgedThrough(ctx, db)
			if err != nil {
				return fmt.Errorf("reading how far the retention purged: %w", err)
			}
			if purged >= from {
				return fmt.Errorf("events from id %d up to %d that were delivered longer ago than the outbox's retain were purged and cannot be delivered again; the ones still kept will be", from, purged)
			}
			return nil
		}),
	}
	addDSNFlag(replay)
	replay.Flags().Bool("parked", false, "replay the parked events")
	replay.Flags().Int64("from", 0, "replay every event from this id on")
	c.AddCommand(status, replay)
	return c
}
