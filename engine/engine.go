// Package engine is the contract between the database-neutral orchestrator
// (package migration) and one database's implementation (package mysqldb,
// package pgdb). Everything database-specific — SQL text,
// introspection, change capture, the swap — lives behind this interface.
package engine

import (
	"context"
	"time"

	"github.com/osc-dev/osc/alter"
	"github.com/osc-dev/osc/applier"
	"github.com/osc-dev/osc/copier"
	"github.com/osc-dev/osc/replication"
	"github.com/osc-dev/osc/verify"
)

// Engine is one database's implementation of an online ALTER.
type Engine interface {
	// Preflight checks the server, privileges and the table without changing
	// anything. A reason to refuse is returned as a *Refusal.
	Preflight(ctx context.Context) error
	// CreateShadow creates the shadow table, applies the clauses to it and
	// describes the result. An ALTER the server rejects is a *Usage error.
	CreateShadow(ctx context.Context, c *alter.Clauses) (*Plan, error)
	// StartCapture starts the change stream at the current position, before
	// any row is copied, and creates whatever the markers need.
	StartCapture(ctx context.Context) (replication.Stream, error)
	// WriteMarker writes a marker that reaches the stream in commit order.
	WriteMarker(ctx context.Context, kind, value string) error
	// Source copies rows of the table into the shadow, chunk by chunk.
	Source() copier.Source
	// SnapshotCopy reports that the copy reads the table as of the point
	// the stream starts at (PostgreSQL: the slot's exported snapshot)
	// rather than its latest rows under locks. No change may then be
	// applied before every chunk is copied: the orchestrator holds the
	// applier until the copy ends.
	SnapshotCopy() bool
	// EndCopy releases what the copy held once every chunk is copied
	// (PostgreSQL: the snapshot, which holds back vacuum); Cleanup releases
	// it on the other paths.
	EndCopy(ctx context.Context) error
	// Writer applies captured changes to the shadow.
	Writer() applier.Writer
	// FinishShadow completes the shadow once every row is copied and the
	// applier has caught up: the engine may defer work until then, such as
	// building secondary and unique indexes, which the copy would slow down
	// and which rows copied ahead of the stream could transiently violate.
	FinishShadow(ctx context.Context) error
	// Restore copies again the rows displaced from the shadow on transient
	// unique key conflicts, and returns how many were pending. Swap fails
	// while any is missing.
	Restore(ctx context.Context) (int, error)
	// VerifyView blocks writes to the table for at most lockTimeout, calls
	// drain, and opens a read view of the table and the shadow at that
	// point; it calls release (which lets the applier go on) before it
	// returns, on every path.
	VerifyView(ctx context.Context, lockTimeout time.Duration, drain func(context.Context) error, release func()) (verify.View, error)
	// Repair copies a chunk again from the table into the shadow.
	Repair(ctx context.Context, c verify.Chunk) error
	// Swap attempts one cut-over: it must leave the original table in place
	// and unlocked when it fails. drain is called once writes to the table
	// are blocked; it returns when every change up to that point is applied.
	Swap(ctx context.Context, lockTimeout time.Duration, drain func(context.Context) error) error
	// Cleanup drops what the run created (shadow unless swapped, capture
	// objects, sentry, changelog). keepOld keeps the renamed original.
	Cleanup(ctx context.Context, swapped, keepOld bool) error
	Close() error

	// LoadValue reads a load variable for --max-load and --critical-load
	// (MySQL: SHOW GLOBAL STATUS; PostgreSQL: Threads_running, the active
	// client backends).
	LoadValue(ctx context.Context, name string) (float64, error)
	// QueryValue runs the operator's throttle query, read-only, and returns
	// the first column of its first row as a number.
	QueryValue(ctx context.Context, query string) (float64, error)
	// ReplicaLag measures how far a replica ("host:port") is behind the
	// heartbeat markers written so far.
	ReplicaLag(ctx context.Context, replica string) (time.Duration, error)
}

// Plan is what a run will do, shown by a dry run.
type Plan struct {
	Schema, Table string
	Shadow        string // shadow table, becomes Table at cut-over
	Old           string // name the original gets at cut-over
	// ShadowDefinition is the shadow's definition as the server produced it.
	ShadowDefinition string
	Columns          []ColumnMapping
	Key              []string // chunking key columns (shared unique key)
	KeyName          string
	RowEstimate      int64
	Path             string // how the change is made, e.g. "online copy"
	// Unverified are shadow columns whose type change makes their values'
	// text differ, so verification cannot compare them.
	Unverified []string
}

// ColumnMapping maps one source column to its shadow column.
type ColumnMapping struct{ Source, Target string }

// Refusal is a preflight reason not to run; nothing was changed.
type Refusal struct{ Reason string }

func (r *Refusal) Error() string { return "refused: " + r.Reason }

// Usage is invalid input from the user (options or the ALTER); nothing was changed.
type Usage struct{ Reason string }

func (u *Usage) Error() string { return "invalid input: " + u.Reason }
