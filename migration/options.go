// Package migration is osc's library API and its orchestrator: Run takes
// Options and returns a Result, for the CLI and for migration runners
// alike. It walks the stages of DESIGN.md §1 in order; every
// database-specific step is behind engine.Engine.
package migration

import (
	"errors"
	"fmt"
	"regexp"
	"time"

	"go.uber.org/zap"

	"github.com/osc-dev/osc/engine"
	"github.com/osc-dev/osc/throttle"
)

// Options configure one online ALTER of one table.
type Options struct {
	Driver   string // "mysql" (MySQL and MariaDB) or "postgres"; default "mysql"
	Host     string
	Port     int // default 3306 (mysql) or 5432 (postgres)
	User     string
	Password string // never logged; PostgreSQL: empty means PGPASSWORD or ~/.pgpass
	Database string
	Schema   string // PostgreSQL schema; default "public"
	Table    string
	// Alter is the ALTER clause list without "ALTER TABLE t", e.g.
	// "ADD COLUMN x INT NOT NULL DEFAULT 0".
	Alter string
	// Execute runs the change; without it Run stops after the plan and
	// leaves nothing behind.
	Execute bool

	// ChunkSize is the rows per copy chunk. Given, it stays fixed (unless
	// ChunkTime is given too); left 0, chunks start at 1000 rows and adapt
	// to DefaultChunkTime.
	ChunkSize          int
	CopyWorkers        int           // chunks copied at once, each on its own connection; default 2 on MySQL, 1 on PostgreSQL (see defaults)
	CutOverLockTimeout time.Duration // per cut-over attempt; default 3s
	CutOverAttempts    int           // default 10
	DropOldTable       bool          // drop the original after cut-over instead of keeping it as _T_old
	// InitiallyDropShadow drops shadow/changelog tables left by an earlier
	// run (PostgreSQL sweeps its own leftovers; this also drops a table in
	// the shadow's place that osc cannot tell is its own).
	InitiallyDropShadow bool
	// InitiallyDropOld drops an old table (_T_old) kept by an earlier run.
	InitiallyDropOld bool
	// SkipVerify skips comparing the shadow with the table before cut-over.
	SkipVerify bool
	// IndexesDuringCopy (MySQL) keeps the shadow's non-unique secondary
	// indexes during the copy. By default they are built after it, in one
	// online ALTER, which is faster but which replicas replay as one
	// statement: they lag for its duration.
	IndexesDuringCopy bool
	// MaxSlotWALBytes (PostgreSQL) aborts the run when the replication
	// slot retains more WAL than this; default 10 GiB.
	MaxSlotWALBytes int64
	// MaintenanceWorkMem (PostgreSQL) is the least maintenance_work_mem the
	// shadow's index builds run with, as the server writes sizes ("256MB",
	// "1GB"); "0" keeps the server's setting. Default 256MB.
	MaintenanceWorkMem string
	ThrottleFlagFile   string // copy pauses while this file exists

	// ChunkTime is the time a copy chunk should take: the chunk size adapts
	// to it after every chunk, starting at ChunkSize. 0 keeps a given
	// ChunkSize fixed.
	ChunkTime time.Duration
	// HeartbeatInterval is how often osc writes a heartbeat through the
	// change stream, for lag; default 100ms.
	HeartbeatInterval time.Duration
	// ThrottleControlReplicas ("host:port") are the replicas (PostgreSQL:
	// standbys) whose lag behind the heartbeats throttles the copy above
	// MaxLag. One that cannot be reached throttles too.
	ThrottleControlReplicas []string
	MaxLag                  time.Duration // default 1.5s
	// MaxLoad throttles the copy while a load variable exceeds its limit,
	// e.g. "Threads_running=25" (PostgreSQL: active client backends).
	MaxLoad string
	// CriticalLoad aborts the run when a load variable exceeds its limit
	// (and still does after CriticalLoadInterval, if set).
	CriticalLoad         string
	CriticalLoadInterval time.Duration
	// ThrottleQuery throttles the copy while it returns a value above 0.
	ThrottleQuery string
	// PostponeCutOverFlagFile: while it exists, the run keeps the shadow
	// current and waits before verification and cut-over.
	PostponeCutOverFlagFile string
	// SocketFile is the control socket's path; "" serves none.
	SocketFile string

	maxLoad, criticalLoad throttle.Limits // parsed by validate

	StatusInterval time.Duration // 0: adaptive (often at start and end)
	Logger         *zap.Logger   // default: no logging
}

func (o *Options) defaults() {
	if o.Driver == "" {
		o.Driver = "mysql"
	}
	if o.Port == 0 {
		o.Port = map[string]int{"mysql": 3306, "postgres": 5432}[o.Driver]
	}
	if o.Driver == "postgres" && o.Schema == "" {
		o.Schema = "public"
	}
	if o.MaintenanceWorkMem == "" {
		o.MaintenanceWorkMem = "256MB"
	}
	if o.MaxSlotWALBytes == 0 {
		o.MaxSlotWALBytes = 10 << 30
	}
	if o.HeartbeatInterval == 0 {
		o.HeartbeatInterval = 100 * time.Millisecond
	}
	if o.MaxLag == 0 {
		o.MaxLag = 1500 * time.Millisecond
	}
	if o.ChunkSize == 0 {
		o.ChunkSize = 1000
		if o.ChunkTime == 0 {
			o.ChunkTime = DefaultChunkTime
		}
	}
	if o.CopyWorkers == 0 {
		// PostgreSQL's walsender decodes every row the copy writes (about
		// 1.3 s of CPU per million rows) while the copy runs: one copy
		// worker and the walsender keep two cores busy, and a second
		// worker competes with both, and for the shadow's extension lock.
		// On two cores, one worker made runs faster (pgbench -s 10: 0.80x
		// the bare copy against 0.75x; -s 50: 0.95x against 0.83x).
		o.CopyWorkers = 2
		if o.Driver == "postgres" {
			o.CopyWorkers = 1
		}
	}
	if o.CutOverLockTimeout == 0 {
		o.CutOverLockTimeout = 3 * time.Second
	}
	if o.CutOverAttempts == 0 {
		o.CutOverAttempts = 10
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
}

// pgMaintenanceWorkMem is MaintenanceWorkMem for pgdb.Config: "" keeps
// the server's setting.
func (o *Options) pgMaintenanceWorkMem() string {
	if o.MaintenanceWorkMem == "0" {
		return ""
	}
	return o.MaintenanceWorkMem
}

// memorySize is a size both pg_size_bytes and the server's settings read
// alike (a bare number would be kilobytes to one, bytes to the other).
var memorySize = regexp.MustCompile(`^[1-9][0-9]{0,9}(kB|MB|GB|TB)$`)

// DefaultChunkTime is the chunk time target when no chunk size is given.
// A chunk of 1000 rows costs its statements and commit much as a chunk of
// 20,000 does (on a 1M-row sysbench table chunks of 1000 rows copied in
// 8.1 s, chunks adapting to 200 ms in 4.8 s), while the rows a chunk
// share-locks (MySQL) are held for the chunk's time: 100 ms keeps that
// wait short for the application.
const DefaultChunkTime = 100 * time.Millisecond

// maxCopyWorkers stays below the engines' connection pools (PostgreSQL: 10),
// which the applier and the markers share.
const maxCopyWorkers = 4

func (o *Options) validate() error {
	var missing []string
	for _, f := range []struct{ name, v string }{{"host", o.Host}, {"user", o.User}, {"database", o.Database}, {"table", o.Table}, {"alter", o.Alter}} {
		if f.v == "" {
			missing = append(missing, "--"+f.name)
		}
	}
	if len(missing) > 0 {
		return &engine.Usage{Reason: fmt.Sprintf("missing %v", missing)}
	}
	if o.Driver != "mysql" && o.Driver != "postgres" {
		return &engine.Usage{Reason: fmt.Sprintf("unknown driver %q (supported: mysql, postgres)", o.Driver)}
	}
	if o.Driver == "mysql" && o.Schema != "" {
		return &engine.Usage{Reason: "--schema is for PostgreSQL; MySQL's schema is --database"}
	}
	if o.Port <= 0 || o.Port > 65535 {
		return &engine.Usage{Reason: fmt.Sprintf("invalid port %d", o.Port)}
	}
	if o.ChunkSize < 1 || o.CopyWorkers < 1 || o.CopyWorkers > maxCopyWorkers || o.CutOverAttempts < 1 || o.CutOverLockTimeout < time.Second {
		return &engine.Usage{Reason: fmt.Sprintf("chunk size and cut-over attempts must be positive, copy workers between 1 and %d, the cut-over lock timeout at least 1s", maxCopyWorkers)}
	}
	if o.ChunkTime < 0 || o.HeartbeatInterval < 10*time.Millisecond || o.MaxLag < 0 || o.CriticalLoadInterval < 0 {
		return &engine.Usage{Reason: "chunk time, max lag and the critical load interval must not be negative, the heartbeat interval at least 10ms"}
	}
	if o.MaintenanceWorkMem != "0" && !memorySize.MatchString(o.MaintenanceWorkMem) {
		return &engine.Usage{Reason: fmt.Sprintf("--maintenance-work-mem %q: want a size such as 256MB or 1GB (units kB, MB, GB, TB), or 0", o.MaintenanceWorkMem)}
	}
	var err error
	if o.maxLoad, err = throttle.ParseLimits(o.MaxLoad); err != nil {
		return &engine.Usage{Reason: "--max-load: " + err.Error()}
	}
	if o.criticalLoad, err = throttle.ParseLimits(o.CriticalLoad); err != nil {
		return &engine.Usage{Reason: "--critical-load: " + err.Error()}
	}
	return nil
}

// Result describes what a run did.
type Result struct {
	Applied       bool         `json:"applied"` // the table now has the new definition
	Plan          *engine.Plan `json:"plan,omitempty"`
	RowsCopied    int64        `json:"rows_copied"`
	EventsApplied int64        `json:"events_applied"`
	// Chunks compared before cut-over, and those that differed and were
	// copied again (0 unless something went wrong in copy or apply).
	VerifiedChunks int           `json:"verified_chunks"`
	RepairedChunks int           `json:"repaired_chunks"`
	OldTable       string        `json:"old_table,omitempty"` // original kept under this name
	Duration       time.Duration `json:"duration_ns"`
	Error          string        `json:"error,omitempty"`
	ExitCode       int           `json:"exit_code"`
}

// Exit codes, stable for scripts and migration runners.
const (
	ExitApplied = 0 // applied, or a dry run that found nothing wrong
	ExitFailed  = 1 // failed; the original table is authoritative and unchanged
	ExitUsage   = 2 // invalid options or ALTER; nothing was changed
	ExitRefused = 3 // refused by preflight; nothing was changed
	ExitAborted = 4 // aborted by the operator; the original table is authoritative, osc removed what it created
)

// ExitCode maps an error returned by Run to the process exit code.
func ExitCode(err error) int {
	var u *engine.Usage
	var r *engine.Refusal
	switch {
	case err == nil:
		return ExitApplied
	case errors.As(err, &u):
		return ExitUsage
	case errors.As(err, &r):
		return ExitRefused
	case errors.Is(err, ErrAborted):
		return ExitAborted
	}
	return ExitFailed
}
