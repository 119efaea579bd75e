// Package e2e holds osc's end-to-end tests: whole migrations run through
// the library API (migration.Run) against the harness's MariaDB, checking
// the invariant of DESIGN.md §2: after cut-over the table holds every row
// of the original, transformed by the ALTER, and nothing else.
package e2e

import (
	"testing"

	"github.com/osc-dev/osc/localtests/harness"
)

func TestMain(m *testing.M) { harness.Main(m) }
