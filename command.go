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
	"github.com/edgevoip/caddy-rocketchat-voip/internal/rcsync"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/schema"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/store"
	// The sync app comes with the handler (and its 'sync' subcommands here).
	_ "github.com/edgevoip/caddy-rocketchat-voip/syncapp"
)

// dsnEnv is read when --dsn is not given, so that a password need not
// appear on a command line.
const dsnEnv = "ROCKETCHAT_VOIP_DSN"

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "rocketchat-voip",
		Usage: "migrate|check|outbox|sync|hash-token|version [--dsn <dsn>]",
		Short: "Manage the rocketchat_voip module's MySQL schema and tokens",
		Long: `
Commands of the rocketchat_voip handler:

  migrate      apply the embedded schema migrations (--status: only show the version)
  check        verify that a database is ready for the gateway
  outbox       show the outbox's delivery status (status), or send events again (replay)
  sync         show the Rocket.Chat sync's state (status), or ask it for a new snapshot (snapshot)
  hash-token   print Rocket.Chat's hash of a login token read from stdin
  version      print the module's version and the schema version it needs

The DSN is taken from --dsn, or else from $` + dsnEnv + `.`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.AddCommand(migrateCommand(), checkCommand(), outboxCommand(), syncCommand(), hashTokenCommand(), versionCommand())
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

// withDSN runs fn with the pool named by --dsn (or the environment),
// its description without credentials, and a context bounded by timeout.
func withDSN(timeout time.Duration, fn func(ctx context.Context, c *cobra.Command, db *sql.DB, where string) error) func(*cobra.Command, []string) error {
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
		RunE: withDSN(5*time.Minute, func(ctx context.Context, c *cobra.Command, db *sql.DB, where string) error {
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
		RunE: withDSN(time.Minute, func(ctx context.Context, c *cobra.Command, db *sql.DB, where string) error {
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
		} else if path.Procedure && !path.FastClose {
			problems = append(problems, "a recent closer's close would take two round trips, not one: "+path.FastWhy)
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

func versionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the module's version, the schema version it needs, and the version Go recorded for the module",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			fmt.Fprintf(c.OutOrStdout(), "rocketchat_voip %s (schema version %d)\n", Version, SchemaVersion())
			if v := moduleBuildVersion(); v != "" {
				fmt.Fprintf(c.OutOrStdout(), "built as %s %s\n", modulePath, v)
			}
			return nil
		},
	}
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

// recentLagEvents is how many of the latest delivered events 'outbox
// status' reads for the delivery lag: a few ms of index and row reads.
const recentLagEvents = 1000

// roundLag rounds a lag to what a reader compares: ms under a second,
// tenths of seconds under a minute, seconds beyond.
func roundLag(d time.Duration) time.Duration {
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond)
	case d < time.Minute:
		return d.Round(100 * time.Millisecond)
	}
	return d.Round(time.Second)
}

func outboxCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "outbox status|replay",
		Short: "Show or steer the delivery of the room_events outbox",
	}
	status := &cobra.Command{
		Use:   "status [--dsn <dsn>]",
		Short: "Print how many events are pending and parked, the oldest pending, and the latest deliveries' lag",
		Args:  cobra.NoArgs,
		RunE: withDSN(time.Minute, func(ctx context.Context, c *cobra.Command, db *sql.DB, where string) error {
			st, err := outbox.ReadStatus(ctx, db)
			if err != nil {
				return err
			}
			oldest := "none"
			if !st.OldestPending.IsZero() {
				oldest = fmt.Sprintf("%s (%s ago)", st.OldestPending.Format(time.RFC3339), time.Since(st.OldestPending).Round(time.Second))
			}
			fmt.Fprintf(c.OutOrStdout(), "%s: pending %d, parked %d, oldest pending %s\n", where, st.Pending, st.Parked, oldest)
			lag, err := outbox.RecentLag(ctx, db, recentLagEvents)
			if err != nil {
				return err
			}
			if lag.N == 0 {
				fmt.Fprintln(c.OutOrStdout(), "delivery lag (close to delivery): none delivered")
				return nil
			}
			fmt.Fprintf(c.OutOrStdout(), "delivery lag (close to delivery) of the last %d delivered, %s to %s: p50 %s, p99 %s, max %s\n",
				lag.N, lag.First.Format(time.RFC3339), lag.Last.Format(time.RFC3339), roundLag(lag.P50), roundLag(lag.P99), roundLag(lag.Max))
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
		RunE: withDSN(time.Minute, func(ctx context.Context, c *cobra.Command, db *sql.DB, where string) error {
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

func syncCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "sync status|snapshot",
		Short: "Show or steer the rocketchat_voip_sync app (Rocket.Chat's MongoDB into MySQL)",
	}
	status := &cobra.Command{
		Use:   "status [--dsn <dsn>] [--source <name>]",
		Short: "Print the sync's phase, leader, freshness, last error, and the write-back's counts",
		Args:  cobra.NoArgs,
		RunE: withDSN(time.Minute, func(ctx context.Context, c *cobra.Command, db *sql.DB, where string) error {
			source, _ := c.Flags().GetString("source")
			st, err := rcsync.ReadStatus(ctx, db, source)
			if err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "%s: %s", where, st)
			if st.State == nil {
				return errors.New("the sync has not run against this database")
			}
			return nil
		}),
	}
	addDSNFlag(status)
	snapshot := &cobra.Command{
		Use:   "snapshot [--dsn <dsn>] [--source <name>]",
		Short: "Make the sync's leader read everything again, then remove the rows Rocket.Chat no longer has",
		Long: `Marks the sync for a new snapshot: the gateway that leads it reads every
document of interest again (resumably), then sweeps the rows whose documents
are gone, and follows again. Until it has finished, the gateways' freshness
check (max_staleness) counts the data as stale.`,
		Args: cobra.NoArgs,
		RunE: withDSN(time.Minute, func(ctx context.Context, c *cobra.Command, db *sql.DB, where string) error {
			source, _ := c.Flags().GetString("source")
			if err := rcsync.RequestSnapshot(ctx, db, source); err != nil {
				return err
			}
			fmt.Fprintf(c.OutOrStdout(), "%s: a snapshot of %q will start at the leader's next round\n", where, source)
			return nil
		}),
	}
	addDSNFlag(snapshot)
	for _, sub := range []*cobra.Command{status, snapshot} {
		sub.Flags().String("source", "rocketchat", "the sync's source name (the app's 'source')")
	}
	c.AddCommand(status, snapshot)
	return c
}
