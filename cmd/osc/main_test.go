package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/osc-dev/osc/engine"
	"github.com/osc-dev/osc/migration"
)

func TestPasswordPrecedence(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(file, []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("OSC_PASSWORD", "from-env")
	for _, tc := range []struct{ flag, file, want string }{
		{"from-flag", file, "from-flag"},
		{"", file, "from-file"}, // the trailing newline is not part of it
		{"", "", "from-env"},
	} {
		got, err := password(tc.flag, tc.file)
		if err != nil || got != tc.want {
			t.Errorf("password(%q, %q) = %q, %v; want %q", tc.flag, tc.file, got, err, tc.want)
		}
	}
	if _, err := password("", filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Error("a missing password file was accepted")
	}
}

// Usage errors exit 2 before osc connects anywhere (nothing listens on
// port 1).
func TestUsageErrors(t *testing.T) {
	base := []string{"--port", "1", "--user", "u", "--database", "d", "--table", "t"}
	for name, args := range map[string][]string{
		"unknown flag":    append(base, "--alter", "ADD COLUMN x INT", "--no-such-flag"),
		"stray argument":  append(base, "--alter", "ADD", "COLUMN", "x", "INT"),
		"two statements":  append(base, "--alter", "ADD COLUMN x INT; DROP TABLE t"),
		"bad log format":  append(base, "--alter", "ADD COLUMN x INT", "--log-format", "xml"),
		"missing --alter": base,
	} {
		if got := run(args); got != migration.ExitUsage {
			t.Errorf("%s: exit %d, want %d", name, got, migration.ExitUsage)
		}
	}
}

func TestPrintPlan(t *testing.T) {
	var b strings.Builder
	printPlan(&b, &engine.Plan{Schema: "shop", Table: "orders", Old: "_orders_old", Path: "online copy",
		KeyName: "PRIMARY", Key: []string{"id"}, RowEstimate: 42,
		Columns:          []engine.ColumnMapping{{Source: "id", Target: "id"}, {Source: "amt", Target: "amount"}},
		Unverified:       []string{"amount"},
		ShadowDefinition: "CREATE TABLE `_orders_new` (\n  `id` int NOT NULL\n)"})
	for _, want := range []string{"shop.orders (dry run", "PRIMARY (id)", "amt -> amount", "not compared by verification (type changed): amount",
		"kept as _orders_old", "    CREATE TABLE `_orders_new` (\n      `id` int NOT NULL\n    )"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("plan lacks %q:\n%s", want, b.String())
		}
	}
}
