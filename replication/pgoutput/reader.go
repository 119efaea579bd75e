// Package pgoutput reads the PostgreSQL logical replication stream of one
// table (output plugin pgoutput, protocol version 1) and turns it into the
// database-neutral events of package replication: row changes of the
// source table, osc's markers (pg_logical_emit_message) and commit
// boundaries, in commit order.
//
// Start creates a temporary logical slot on a replication connection and
// starts streaming from the slot's consistent point. With Config.Snapshot,
// the slot exports its snapshot first: a copy made in that snapshot holds
// exactly the transactions that committed before the consistent point, and
// the stream exactly those that commit after it. One goroutine owns the
// connection: it receives and decodes messages and queues the events for
// Next in a bounded queue. While the queue is full it stops reading but
// keeps answering the server (standby status updates), so a slow consumer
// neither loses events nor gets the connection killed by
// wal_sender_timeout. The slot is told that WAL is no longer needed only
// up to what the consumer confirmed with Applied.
//
// Values are passed through as PostgreSQL's text form (Go strings), NULL as
// nil, and replication.Unchanged for what the stream did not carry: an
// unchanged TOASTed value in a new row, a column outside the replica
// identity in an old row.
package pgoutput

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/zap"

	"github.com/osc-dev/osc/replication"
)

// Config configures a Reader.
type Config struct {
	// Conn is a libpq-style connection string (URL or key=value) without
	// the replication parameter; the reader adds replication=database. It
	// may carry a password: it is never logged nor quoted in errors.
	Conn string
	// Slot is the name of the temporary logical slot the reader creates
	// (pgoutput). The server drops it when the connection ends. Lower-case
	// letters, digits and underscores, at most 63.
	Slot string
	// Publication exists already and contains exactly the one table.
	Publication string
	// Relation is the OID of the table.
	Relation uint32
	// Columns are the table's non-dropped, non-generated columns in attnum
	// order, as read from the catalog. The stream's first Relation message
	// must match them exactly.
	Columns []Column
	// MarkerPrefix is the pg_logical_emit_message prefix of osc's markers.
	// Their content is "kind:value".
	MarkerPrefix string
	// Check, if set, is called about every CheckEvery (default 5s) from
	// the reader's goroutine, also while the consumer is not reading; an
	// error ends the stream. It is meant for limits such as the slot's WAL
	// retention. Its context is canceled by Close.
	Check      func(ctx context.Context) error
	CheckEvery time.Duration
	// Snapshot, if set, makes the slot export its snapshot
	// (EXPORT_SNAPSHOT) and is called with the snapshot's name before
	// START_REPLICATION. The snapshot sees exactly the transactions that
	// committed before the slot's consistent point; every transaction that
	// commits after it is in the stream. It stays importable only until
	// the replication connection's next command, so Snapshot must import it
	// (SET TRANSACTION SNAPSHOT) into a transaction of its own that lives
	// on after the call. An error ends Start.
	Snapshot func(ctx context.Context, name string) error

	Logger *zap.Logger
}

// Column is one column of the source table.
type Column struct {
	Name    string
	TypeOID uint32
}

// ErrClosed is wrapped by what Next returns once the Reader is closed.
var ErrClosed = errors.New("reader closed")

// Tunables.
const (
	// queueSize bounds the events decoded ahead of Next.
	queueSize = 4096
	// statusInterval is the longest time between two standby status
	// updates (wal_sender_timeout defaults to 60s; the server also asks for
	// a reply when half of it has passed, and gets one at once).
	statusInterval = 10 * time.Second
	// parkedStatusInterval applies while the queue is full and the
	// connection is not read, so requests for a reply go unseen: the
	// updates alone must keep a short wal_sender_timeout at bay.
	parkedStatusInterval = time.Second
	// ackInterval is the shortest time between two status updates sent
	// because the confirmable position advanced.
	ackInterval = time.Second
	// recvTick bounds a receive, so that the loop notices Close, due
	// status updates and checks.
	recvTick = 100 * time.Millisecond
	// writeTimeout bounds sending a status update.
	writeTimeout = 10 * time.Second
	// closeTimeout bounds closing the connection.
	closeTimeout = 5 * time.Second
	// defaultCheckEvery is CheckEvery's default.
	defaultCheckEvery = 5 * time.Second
)

// Reader streams the logical replication of one table. It implements
// replication.Stream and replication.Acker. Next must not be called
// concurrently with itself; Applied and Close may be called from any
// goroutine.
type Reader struct {
	cfg             Config
	log             *zap.Logger
	conn            *pgconn.PgConn
	consistentPoint uint64

	events  chan replication.Event
	closing chan struct{} // closed by Close
	done    chan struct{} // closed when the goroutine has exited
	err     error         // why the stream ended; set before events is closed

	applied   atomic.Uint64
	closeOnce sync.Once

	// Owned by the goroutine.
	dec          *decoder
	checkCtx     context.Context
	cancelCheck  context.CancelFunc
	checkEvery   time.Duration
	nextCheck    time.Time
	keepaliveEnd uint64    // the latest ServerWALEnd of a keepalive
	lastStatus   time.Time // when the last status update was sent
	lastPos      uint64    // the position it confirmed
	readDeadline time.Time
	timer        *time.Timer
}

var (
	_ replication.Stream = (*Reader)(nil)
	_ replication.Acker  = (*Reader)(nil)
)

// errClosing ends the goroutine's loop when Close was called.
var errClosing = errors.New("closing")

var slotName = regexp.MustCompile(`^[a-z0-9_]{1,63}$`)

func validate(cfg Config) error {
	var missing []string
	if cfg.Conn == "" {
		missing = append(missing, "Conn")
	}
	if cfg.Slot == "" {
		missing = append(missing, "Slot")
	}
	if cfg.Publication == "" {
		missing = append(missing, "Publication")
	}
	if cfg.Relation == 0 {
		missing = append(missing, "Relation")
	}
	if len(cfg.Columns) == 0 {
		missing = append(missing, "Columns")
	}
	if cfg.MarkerPrefix == "" {
		missing = append(missing, "MarkerPrefix")
	}
	if len(missing) > 0 {
		return fmt.Errorf("pgoutput: config is missing %s", strings.Join(missing, ", "))
	}
	if !slotName.MatchString(cfg.Slot) {
		return fmt.Errorf("pgoutput: invalid slot name %q: use at most 63 lower-case letters, digits and underscores", cfg.Slot)
	}
	if strings.IndexByte(cfg.Publication, 0) >= 0 || strings.IndexByte(cfg.MarkerPrefix, 0) >= 0 {
		return errors.New("pgoutput: Publication and MarkerPrefix must not contain NUL bytes")
	}
	return nil
}

// Start connects, creates the temporary slot (CREATE_REPLICATION_SLOT ...
// TEMPORARY LOGICAL pgoutput, exporting its snapshot to Config.Snapshot if
// set) and returns once START_REPLICATION runs from the slot's consistent
// point. Creating the slot waits for the transactions running at that
// moment to end; ctx bounds that and the rest of the setup (Snapshot
// included), not the stream.
func Start(ctx context.Context, cfg Config) (*Reader, error) {
	if err := validate(cfg); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	pgcfg, err := pgconn.ParseConfig(cfg.Conn)
	if err != nil {
		// pgconn's message quotes the connection string (and a URL
		// parser's error may too): it could show the password.
		return nil, errors.New("pgoutput: cannot parse the connection string (not shown: it may hold a password)")
	}
	if pgcfg.RuntimeParams == nil {
		pgcfg.RuntimeParams = map[string]string{}
	}
	pgcfg.RuntimeParams["replication"] = "database"

	log = log.With(zap.String("slot", cfg.Slot))
	conn, err := pgconn.ConnectConfig(ctx, pgcfg)
	if err != nil {
		return nil, fmt.Errorf("pgoutput: connecting for logical replication: %w", err)
	}
	fail := func(format string, args ...any) (*Reader, error) {
		cctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		defer cancel()
		conn.Close(cctx)
		return nil, fmt.Errorf(format, args...)
	}
	action := "NOEXPORT_SNAPSHOT"
	if cfg.Snapshot != nil {
		action = "EXPORT_SNAPSHOT"
	}
	slot, err := pglogrepl.CreateReplicationSlot(ctx, conn, cfg.Slot, "pgoutput", pglogrepl.CreateReplicationSlotOptions{
		Temporary:      true,
		SnapshotAction: action,
		Mode:           pglogrepl.LogicalReplication,
	})
	if err != nil {
		return fail("pgoutput: creating the temporary logical replication slot %s: %w", cfg.Slot, err)
	}
	start, err := pglogrepl.ParseLSN(slot.ConsistentPoint)
	if err != nil {
		return fail("pgoutput: slot %s: consistent point %q: %w", cfg.Slot, slot.ConsistentPoint, err)
	}
	if cfg.Snapshot != nil {
		if slot.SnapshotName == "" {
			return fail("pgoutput: slot %s exported no snapshot", cfg.Slot)
		}
		// The snapshot is importable until this connection's next command.
		if err := cfg.Snapshot(ctx, slot.SnapshotName); err != nil {
			return fail("pgoutput: importing the snapshot of slot %s: %w", cfg.Slot, err)
		}
	}
	err = pglogrepl.StartReplication(ctx, conn, cfg.Slot, start, pglogrepl.StartReplicationOptions{
		Mode: pglogrepl.LogicalReplication,
		PluginArgs: []string{
			"proto_version '1'",
			"publication_names " + quoteLiteral(quoteIdent(cfg.Publication)),
			"messages 'true'",
		},
	})
	if err != nil {
		return fail("pgoutput: starting logical replication from slot %s (publication %s): %w", cfg.Slot, cfg.Publication, err)
	}
	log.Info("logical replication started",
		zap.String("host", pgcfg.Host), zap.Uint16("port", pgcfg.Port), zap.String("user", pgcfg.User),
		zap.String("database", pgcfg.Database),
		zap.String("publication", cfg.Publication), zap.Uint32("relation", cfg.Relation),
		zap.String("consistent_point", slot.ConsistentPoint), zap.Bool("exported_snapshot", cfg.Snapshot != nil))

	checkCtx, cancelCheck := context.WithCancel(context.Background())
	checkEvery := cfg.CheckEvery
	if checkEvery <= 0 {
		checkEvery = defaultCheckEvery
	}
	now := time.Now()
	r := &Reader{
		cfg:             cfg,
		log:             log,
		conn:            conn,
		consistentPoint: uint64(start),
		events:          make(chan replication.Event, queueSize),
		closing:         make(chan struct{}),
		done:            make(chan struct{}),
		dec:             newDecoder(cfg.Columns, cfg.Relation, cfg.MarkerPrefix),
		checkCtx:        checkCtx,
		cancelCheck:     cancelCheck,
		checkEvery:      checkEvery,
		nextCheck:       now.Add(checkEvery),
		lastStatus:      now,
		timer:           time.NewTimer(time.Hour),
	}
	r.timer.Stop()
	go r.run()
	return r, nil
}

// quoteIdent quotes a name for publication_names, a list of identifiers.
func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

// quoteLiteral quotes a replication command's string literal.
func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// ConsistentPoint is the slot's consistent point (an LSN, see FormatLSN):
// the stream holds every transaction that commits after it.
func (r *Reader) ConsistentPoint() uint64 { return r.consistentPoint }

// Next returns the next event: one row change, a marker, or the commit of
// a transaction. An error other than ctx's is final.
func (r *Reader) Next(ctx context.Context) (replication.Event, error) {
	select {
	case ev, ok := <-r.events:
		if !ok {
			return replication.Event{}, r.err
		}
		return ev, nil
	case <-ctx.Done():
		return replication.Event{}, ctx.Err()
	}
}

// Err is why the stream ended, or nil while it runs. Unlike Next it does
// not wait, and it reports the end even while events are still queued: a
// consumer that holds off reading (during a snapshot copy) can stop early.
func (r *Reader) Err() error {
	select {
	case <-r.done:
		return r.err
	default:
		return nil
	}
}

// Applied confirms that everything up to pos (a commit's Ack) is applied:
// the slot may release the WAL before it. Positions never go back.
func (r *Reader) Applied(pos uint64) {
	for {
		cur := r.applied.Load()
		if pos <= cur || r.applied.CompareAndSwap(cur, pos) {
			return
		}
	}
}

// Close ends replication and closes the connection; the server drops the
// temporary slot as the connection ends. It waits for the goroutine to
// exit and may be called more than once.
func (r *Reader) Close() error {
	r.closeOnce.Do(func() {
		close(r.closing)
		r.cancelCheck()
	})
	<-r.done
	return nil
}

func (r *Reader) run() {
	defer close(r.done)
	err := r.loop()
	if errors.Is(err, errClosing) {
		err = ErrClosed
		r.log.Debug("logical replication closed")
	} else {
		r.log.Warn("logical replication failed", zap.Error(err))
	}
	r.err = fmt.Errorf("logical replication from slot %s: %w", r.cfg.Slot, err)
	close(r.events)
	r.timer.Stop()
	r.cancelCheck()
	ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
	defer cancel()
	if err := r.conn.Close(ctx); err != nil {
		r.log.Debug("closing the replication connection", zap.Error(err))
	}
}

func (r *Reader) loop() error {
	for {
		select {
		case <-r.closing:
			return errClosing
		default:
		}
		now := time.Now()
		if err := r.housekeep(now, statusInterval); err != nil {
			return err
		}
		if !now.Before(r.readDeadline) {
			r.readDeadline = now.Add(recvTick)
			if err := r.conn.Conn().SetReadDeadline(r.readDeadline); err != nil {
				return fmt.Errorf("setting a read deadline: %w", err)
			}
		}
		// context.Background makes pgconn skip its context watcher: the
		// read deadline bounds the receive, and a timeout leaves the
		// connection usable (a partly read message is kept).
		msg, err := r.conn.ReceiveMessage(context.Background())
		if err != nil {
			if pgconn.Timeout(err) {
				continue
			}
			return fmt.Errorf("receiving: %w", err)
		}
		switch m := msg.(type) {
		case *pgproto3.CopyData:
			if err := r.copyData(m.Data); err != nil {
				return err
			}
		case *pgproto3.ErrorResponse:
			return pgconn.ErrorResponseToPgError(m)
		case *pgproto3.CopyDone:
			return errors.New("the server ended the replication stream")
		case *pgproto3.NoticeResponse:
			r.log.Info("server notice", zap.String("severity", m.Severity), zap.String("message", m.Message))
		case *pgproto3.ParameterStatus:
		default:
			return fmt.Errorf("unexpected %T on the replication connection", msg)
		}
	}
}

// copyData handles one message of the replication stream.
func (r *Reader) copyData(data []byte) error {
	if len(data) == 0 {
		return errors.New("empty CopyData message")
	}
	switch data[0] {
	case pglogrepl.XLogDataByteID:
		xld, err := pglogrepl.ParseXLogData(data[1:])
		if err != nil {
			return err
		}
		ev, ok, err := r.dec.decode(xld.WALData)
		if err != nil {
			if xld.WALStart != 0 {
				return fmt.Errorf("at %s: %w", FormatLSN(uint64(xld.WALStart)), err)
			}
			return err
		}
		if ok {
			return r.emit(ev)
		}
	case pglogrepl.PrimaryKeepaliveMessageByteID:
		pkm, err := pglogrepl.ParsePrimaryKeepaliveMessage(data[1:])
		if err != nil {
			return err
		}
		if end := uint64(pkm.ServerWALEnd); end > r.keepaliveEnd {
			r.keepaliveEnd = end
		}
		if pkm.ReplyRequested {
			return r.sendStatus(time.Now())
		}
	default:
		return fmt.Errorf("unexpected replication message type %q", data[0])
	}
	return nil
}

// emit queues an event for Next. While the queue is full it keeps the
// connection alive and runs the checks, without reading from it.
func (r *Reader) emit(ev replication.Event) error {
	select {
	case r.events <- ev:
		return nil
	default:
	}
	for {
		now := time.Now()
		wait := r.lastStatus.Add(parkedStatusInterval).Sub(now)
		if r.cfg.Check != nil {
			wait = min(wait, r.nextCheck.Sub(now))
		}
		r.timer.Reset(max(wait, 10*time.Millisecond))
		select {
		case r.events <- ev:
			return nil
		case <-r.closing:
			return errClosing
		case <-r.timer.C:
			if err := r.housekeep(time.Now(), parkedStatusInterval); err != nil {
				return err
			}
		}
	}
}

// housekeep runs the check and sends a status update when due.
func (r *Reader) housekeep(now time.Time, interval time.Duration) error {
	if r.cfg.Check != nil && !now.Before(r.nextCheck) {
		if err := r.cfg.Check(r.checkCtx); err != nil {
			if r.checkCtx.Err() != nil {
				return errClosing
			}
			return err
		}
		now = time.Now()
		r.nextCheck = now.Add(r.checkEvery)
	}
	since := now.Sub(r.lastStatus)
	if since >= interval || (since >= ackInterval && r.confirmable() > r.lastPos) {
		return r.sendStatus(now)
	}
	return nil
}

// confirmable is the position a status update confirms: what the consumer
// applied, or, when it applied every commit received and no transaction is
// open, the server's WAL end from its latest keepalive, so that an idle
// table does not retain WAL. It never goes back.
func (r *Reader) confirmable() uint64 {
	applied := r.applied.Load()
	pos := applied
	if !r.dec.inTxn && r.dec.lastCommitEnd <= applied && r.keepaliveEnd > pos {
		pos = r.keepaliveEnd
	}
	return max(pos, r.lastPos)
}

func (r *Reader) sendStatus(now time.Time) error {
	pos := r.confirmable()
	nc := r.conn.Conn()
	if err := nc.SetWriteDeadline(now.Add(writeTimeout)); err != nil {
		return fmt.Errorf("setting a write deadline: %w", err)
	}
	lsn := pglogrepl.LSN(pos)
	err := pglogrepl.SendStandbyStatusUpdate(context.Background(), r.conn, pglogrepl.StandbyStatusUpdate{
		WALWritePosition: lsn,
		WALFlushPosition: lsn,
		WALApplyPosition: lsn,
		ClientTime:       now,
	})
	if err != nil {
		return fmt.Errorf("sending a standby status update: %w", err)
	}
	if err := nc.SetWriteDeadline(time.Time{}); err != nil {
		return fmt.Errorf("clearing the write deadline: %w", err)
	}
	r.lastStatus, r.lastPos = now, pos
	return nil
}
