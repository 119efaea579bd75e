// Package replication holds the database-neutral model of a change stream:
// row changes of the source table and osc's own markers, delivered in commit
// order. Each database has its own reader (replication/binlog for
// MySQL/MariaDB) that produces these events.
package replication

import "context"

// Op is the kind of a row change.
type Op uint8

const (
	Insert Op = iota + 1
	Update
	Delete
)

func (o Op) String() string {
	switch o {
	case Insert:
		return "insert"
	case Update:
		return "update"
	case Delete:
		return "delete"
	}
	return "unknown"
}

// Change is one row change of the source table. Before and After are row
// images in the source table's column order, with values already
// normalised by the reader so that they can be passed to the database as
// statement parameters (nil, int64, uint64, float64, string or []byte; the
// PostgreSQL reader passes every value as its text form). A column the
// stream did not carry is Unchanged: an unchanged TOASTed value in After,
// a column outside the replica identity in Before. Before is nil for
// inserts, After is nil for deletes.
type Change struct {
	Op     Op
	Before []any
	After  []any
}

// Unchanged stands for a column value the stream did not carry; it is not
// NULL and must not be written.
type Unchanged struct{}

// Marker is a row osc wrote to its changelog table, read back from the stream.
// Its place in the stream orders it against the application's writes.
type Marker struct {
	Kind  string
	Value string
}

// Event is one item of the stream. Exactly one of Changes, Marker or Commit
// is set.
type Event struct {
	Changes []Change
	Marker  *Marker
	// Commit marks the end of a source transaction; Pos is the stream
	// position after it, for status and diagnostics.
	Commit bool
	Pos    string
	// Ack, on a commit, is the position to confirm to an Acker once
	// everything up to it is applied; 0 when the stream takes no acks.
	Ack uint64
}

// Acker is a stream whose source retains changes until the consumer
// confirms them as applied (a PostgreSQL replication slot).
type Acker interface {
	// Applied confirms every change up to a commit's Ack position.
	Applied(pos uint64)
}

// Stream delivers events in commit order.
type Stream interface {
	// Next blocks until the next event, ctx is done, or the stream fails.
	// A failure is final: the run must abort.
	Next(ctx context.Context) (Event, error)
	Close() error
}
