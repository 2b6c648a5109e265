package systemtest

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/edgevoip/caddy-rocketchat-voip/internal/testcaddy"
	"github.com/edgevoip/caddy-rocketchat-voip/internal/testdb"
)

// A fenced block whose info string is "<lang> runnable" is run by these
// tests (docs/testing.md, Runnable blocks): a Caddyfile must be caddy
// fmt-clean, adapt, and pass caddy validate; JSON must pass caddy validate;
// sh blocks are the setup guide's steps, which scripts/setup-guide.sh runs
// in order.
type docBlock struct {
	file string
	line int
	lang string
	text string
}

// runnableBlocks reads the runnable blocks of README.md and docs/*.md.
func runnableBlocks(t *testing.T) []docBlock {
	t.Helper()
	files, err := filepath.Glob("../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	files = append([]string{"../README.md"}, files...)
	var blocks []docBlock
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(bytes.NewReader(data))
		var cur *docBlock
		fence := "" // the open fence's backticks, runnable or not
		for n := 1; sc.Scan(); n++ {
			line := sc.Text()
			switch {
			case fence == "" && strings.HasPrefix(line, "```"):
				info := strings.TrimLeft(line, "`")
				fence = line[:len(line)-len(info)]
				if f := strings.Fields(info); len(f) == 2 && f[1] == "runnable" {
					cur = &docBlock{file: strings.TrimPrefix(file, "../"), line: n, lang: f[0]}
				}
			case fence != "" && strings.TrimRight(line, " ") == fence:
				if cur != nil {
					blocks = append(blocks, *cur)
				}
				cur, fence = nil, ""
			case cur != nil:
				cur.text += line + "\n"
			}
		}
		if cur != nil {
			t.Fatalf("%s:%d: a runnable block is never closed", cur.file, cur.line)
		}
	}
	return blocks
}

func TestRunnableDocBlocks(t *testing.T) {
	db := testdb.New(t) // migrated: what caddy validate provisions against
	bin := testcaddy.Binary(t)
	blocks := runnableBlocks(t)
	counts := map[string]int{}
	for _, b := range blocks {
		counts[b.lang]++
		where := b.file + ":" + strconv.Itoa(b.line)
		switch b.lang {
		case "caddyfile":
			formatted := string(caddyfile.Format([]byte(b.text)))
			if formatted != b.text {
				t.Errorf("%s: the Caddyfile is not caddy fmt-clean; caddy fmt gives:\n%s", where, formatted)
			}
			if _, err := testcaddy.Adapt(b.text); err != nil {
				t.Errorf("%s: caddy adapt: %v", where, err)
			}
			validate(t, bin, db.DSN, where, "Caddyfile", b.text, "--adapter", "caddyfile")
		case "json":
			validate(t, bin, db.DSN, where, "caddy.json", b.text)
		case "sh":
			if b.file != "docs/setup.md" {
				t.Errorf("%s: sh runnable blocks are the setup guide's steps (docs/setup.md); run this one from a test of its own", where)
			}
		default:
			t.Errorf("%s: no test runs %q blocks", where, b.lang)
		}
	}
	t.Logf("runnable blocks checked: %v", counts)
	if counts["caddyfile"] == 0 || counts["sh"] == 0 {
		t.Fatalf("found %v runnable blocks; README.md and docs/ mark at least a Caddyfile and the setup guide's steps", counts)
	}
}

// validate runs caddy validate on a config, with the environment the docs'
// configs read.
func validate(t *testing.T, bin, dsn, where, name, text string, args ...string) {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, append([]string{"validate", "--config", path}, args...)...)
	cmd.Env = append(os.Environ(), "ROCKETCHAT_VOIP_DSN="+dsn, "VOIP_WEBHOOK_SECRET=doc-test-secret",
		"XDG_CONFIG_HOME="+dir, "XDG_DATA_HOME="+dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("%s: caddy validate: %v\n%s", where, err, out)
	}
}

// TestSetupGuide follows docs/setup.md on a fresh database
// (scripts/setup-guide.sh): create the database and both users, grant the
// migrator, migrate, grant the gateway from docs/grants.sql, check, start,
// seed and close a room.
func TestSetupGuide(t *testing.T) {
	db := testdb.New(t) // the server answers (or the test skips, or fails under CI)
	if !testServerHasProcedures(t, db) {
		// The guide is written for MariaDB and MySQL: its grant files name
		// the close's procedure and CREATE ROUTINE, which TiDB lacks (the
		// files say which lines to leave out there).
		t.Skipf("%s has no stored procedures: docs/setup.md's grants are for MariaDB and MySQL", engineOf(t, db))
	}
	if _, err := exec.LookPath("mysql"); err != nil {
		if testdb.Required() {
			t.Fatal("the setup guide uses the mysql client, which is not installed")
		}
		t.Skip("the setup guide uses the mysql client, which is not installed")
	}
	cmd := exec.Command("bash", "../scripts/setup-guide.sh")
	cmd.Env = append(os.Environ(), "CADDY_BIN="+testcaddy.Binary(t), "ROCKETCHAT_VOIP_TEST_DSN="+testdb.ServerConfig(t).FormatDSN())
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("scripts/setup-guide.sh: %v\n%s", err, out)
	}
}
