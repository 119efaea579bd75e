// Package binlog reads the MySQL/MariaDB binary log of one table and turns
// it into the database-neutral events of package replication: row changes
// of the source table, osc's changelog markers and commit boundaries, in
// binlog order.
//
// It registers as a replica (go-mysql's BinlogSyncer) and starts at a
// file/position taken by the caller with SHOW MASTER STATUS. Values are
// normalised from the table's own definition (Config.Columns), never from
// the optional row metadata of the binlog, which MariaDB does not log by
// default (binlog_row_metadata=NO_LOG).
package binlog

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/go-mysql-org/go-mysql/mysql"
	gmrepl "github.com/go-mysql-org/go-mysql/replication"
	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"

	"github.com/osc-dev/osc/alter"
	"github.com/osc-dev/osc/replication"
)

// Column describes one column of the source table, as read from
// information_schema.COLUMNS.
type Column struct {
	Name string
	// DataType is information_schema.COLUMNS.DATA_TYPE in lower case:
	// "int", "bigint", "enum", "binary", "varchar", "datetime", ...
	DataType string
	Unsigned bool
	// Values are the ENUM/SET members in definition order, unquoted.
	Values []string
	// Length is n of BINARY(n), in bytes.
	Length int
}

// Position is a binlog file and offset.
type Position struct {
	File string
	Pos  uint32
}

func (p Position) String() string { return fmt.Sprintf("%s:%d", p.File, p.Pos) }

// Config configures a Reader.
type Config struct {
	Host     string
	Port     uint16
	User     string
	Password string
	// Flavor is "mariadb" or "mysql".
	Flavor string
	// ServerID is the replica server id this reader registers with; it must
	// be unique among the server's replicas and not 0.
	ServerID uint32

	Schema string
	Table  string
	// Columns are the source table's columns, in table order.
	Columns []Column
	// Changelog is osc's changelog table in the same schema, with columns
	// (id, kind, value, ...); its inserted rows become markers.
	Changelog string

	// Start is where streaming begins (SHOW MASTER STATUS taken by the caller).
	Start Position

	Logger *zap.Logger
}

// Tunables of the replication connection.
const (
	// heartbeatPeriod asks the server to send a heartbeat when the binlog is
	// idle, so that a dead connection is noticed by readTimeout.
	heartbeatPeriod = 2 * time.Second
	readTimeout     = 30 * time.Second
	// maxReconnectAttempts bounds go-mysql's own reconnects (about a second
	// apart, each with a 10 s connect timeout). A reconnect resumes right
	// after the last event received, so it neither loses nor repeats events;
	// if it cannot, the stream fails instead of retrying forever.
	maxReconnectAttempts = 5
	// eventCacheCount bounds the events go-mysql decodes ahead of Next.
	eventCacheCount = 1024
	// maxStatementInError is how much of a statement an error quotes.
	maxStatementInError = 200
)

// Reader streams the binlog events of one table. It implements
// replication.Stream. Next must not be called concurrently with itself;
// Close may be called from another goroutine to stop a blocked Next.
type Reader struct {
	cfg  Config
	log  *zap.Logger
	norm *normaliser

	syncer   *gmrepl.BinlogSyncer
	streamer *gmrepl.BinlogStreamer

	// file is the current binlog file, from Rotate events.
	file string
	// next is where the next event of file must start (the end of the last
	// one), to prove that the stream has neither gaps nor repeats, also
	// across go-mysql's reconnects.
	next uint32
	// emitted is true while the current transaction has produced events,
	// so that its end is reported as a Commit.
	emitted bool

	queue []replication.Event
	head  int

	err       error
	closeOnce sync.Once
}

var _ replication.Stream = (*Reader)(nil)

// Open connects to the server as a replica and starts streaming from
// cfg.Start. The binlog must be in ROW format with FULL row images.
func Open(ctx context.Context, cfg Config) (*Reader, error) {
	if err := validate(cfg); err != nil {
		return nil, err
	}
	norm, err := newNormaliser(cfg.Columns)
	if err != nil {
		return nil, fmt.Errorf("binlog: %w", err)
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	r := &Reader{cfg: cfg, log: log, norm: norm, file: cfg.Start.File, next: max(cfg.Start.Pos, 4)}
	r.syncer = gmrepl.NewBinlogSyncer(gmrepl.BinlogSyncerConfig{
		ServerID: cfg.ServerID,
		Flavor:   cfg.Flavor,
		Host:     cfg.Host,
		Port:     cfg.Port,
		User:     cfg.User,
		Password: cfg.Password, // go-mysql blanks it before logging its config
		// Decimals and temporal values stay go-mysql's exact strings;
		// TIMESTAMP is rendered in UTC, like osc's sessions (time_zone='+00:00').
		ParseTime:               false,
		UseDecimal:              false,
		TimestampStringLocation: time.UTC,
		// MySQL 8 native JSON: render the binary JSON as MySQL's own text so
		// that doubles and key order survive a round trip.
		RenderJSONAsMySQLText: true,
		HeartbeatPeriod:       heartbeatPeriod,
		ReadTimeout:           readTimeout,
		MaxReconnectAttempts:  maxReconnectAttempts,
		// MariaDB 11.4+ logs the events inside a transaction with
		// end_log_pos 0; without this go-mysql would resume a broken
		// connection from the transaction's start and repeat its rows.
		FillZeroLogPos:      cfg.Flavor == mysql.MariaDBFlavor,
		VerifyChecksum:      true,
		EventCacheCount:     eventCacheCount,
		RowsEventDecodeFunc: r.decodeRows,
		Logger:              slog.New(zapslog.NewHandler(log.Core(), zapslog.WithName("go-mysql"))),
	})
	log.Info("starting binlog stream",
		zap.String("host", cfg.Host), zap.Uint16("port", cfg.Port), zap.String("user", cfg.User),
		zap.String("flavor", cfg.Flavor), zap.Uint32("server_id", cfg.ServerID),
		zap.Stringer("start", cfg.Start))
	r.streamer, err = r.syncer.StartSync(mysql.Position{Name: cfg.Start.File, Pos: cfg.Start.Pos})
	if err != nil {
		r.syncer.Close()
		return nil, fmt.Errorf("binlog: start streaming the binlog of %s:%d from %s: %w", cfg.Host, cfg.Port, cfg.Start, err)
	}
	return r, nil
}

func validate(cfg Config) error {
	var missing []string
	if cfg.Host == "" {
		missing = append(missing, "Host")
	}
	if cfg.Schema == "" {
		missing = append(missing, "Schema")
	}
	if cfg.Table == "" {
		missing = append(missing, "Table")
	}
	if len(cfg.Columns) == 0 {
		missing = append(missing, "Columns")
	}
	if cfg.Start.File == "" {
		missing = append(missing, "Start.File")
	}
	if len(missing) > 0 {
		return fmt.Errorf("binlog: config is missing %s", strings.Join(missing, ", "))
	}
	if cfg.ServerID == 0 {
		return errors.New("binlog: ServerID must not be 0")
	}
	if cfg.Flavor != mysql.MariaDBFlavor && cfg.Flavor != mysql.MySQLFlavor {
		return fmt.Errorf("binlog: Flavor must be %q or %q, not %q", mysql.MariaDBFlavor, mysql.MySQLFlavor, cfg.Flavor)
	}
	if cfg.Changelog == cfg.Table {
		return errors.New("binlog: Changelog must differ from Table")
	}
	return nil
}

// Next returns the next event: a batch of row changes of the table, a
// changelog marker, or the commit of a transaction that had any of these.
// An error other than ctx's is final.
func (r *Reader) Next(ctx context.Context) (replication.Event, error) {
	if r.err != nil {
		return replication.Event{}, r.err
	}
	for r.head == len(r.queue) {
		r.queue, r.head = r.queue[:0], 0
		ev, err := r.streamer.GetEvent(ctx)
		if err != nil {
			if ctxErr := ctx.Err(); ctxErr != nil && errors.Is(err, ctxErr) {
				return replication.Event{}, err
			}
			if errors.Is(err, gmrepl.ErrSyncClosed) {
				r.err = fmt.Errorf("binlog: stream of %s closed after %s:%d", r.tableName(), r.file, r.syncer.GetNextPosition().Pos)
			} else {
				r.err = fmt.Errorf("binlog: reading the binlog of %s:%d after %s:%d failed: %w",
					r.cfg.Host, r.cfg.Port, r.file, r.syncer.GetNextPosition().Pos, err)
			}
			return replication.Event{}, r.err
		}
		if err := r.handle(ev); err != nil {
			r.err = err
			return replication.Event{}, err
		}
	}
	e := r.queue[r.head]
	r.queue[r.head] = replication.Event{}
	r.head++
	return e, nil
}

// Close stops the stream and closes the replication connection.
func (r *Reader) Close() error {
	r.closeOnce.Do(func() {
		r.syncer.Close()
	})
	return nil
}

func (r *Reader) tableName() string {
	return "`" + r.cfg.Schema + "`.`" + r.cfg.Table + "`"
}

func (r *Reader) emit(e replication.Event) {
	r.queue = append(r.queue, e)
	r.emitted = true
}

func (r *Reader) commit(h *gmrepl.EventHeader) {
	if !r.emitted {
		return
	}
	r.emitted = false
	r.queue = append(r.queue, replication.Event{Commit: true, Pos: fmt.Sprintf("%s:%d", r.file, h.LogPos)})
}

// at returns the start position of an event, for messages.
func (r *Reader) at(h *gmrepl.EventHeader) string {
	pos := h.LogPos
	if pos >= h.EventSize {
		pos -= h.EventSize
	}
	return fmt.Sprintf("%s:%d", r.file, pos)
}

func (r *Reader) handle(ev *gmrepl.BinlogEvent) error {
	if err := r.checkContinuity(ev); err != nil {
		return err
	}
	return r.dispatch(ev)
}

func (r *Reader) dispatch(ev *gmrepl.BinlogEvent) error {
	switch e := ev.Event.(type) {
	case *gmrepl.RotateEvent:
		r.file = string(e.NextLogName)
		r.next = uint32(e.Position)
	case *gmrepl.TableMapEvent:
		return r.handleTableMap(ev.Header, e)
	case *gmrepl.RowsEvent:
		return r.handleRows(ev.Header, e)
	case *gmrepl.XIDEvent:
		r.commit(ev.Header)
	case *gmrepl.QueryEvent:
		return r.handleQuery(ev.Header, e)
	case *gmrepl.TransactionPayloadEvent:
		// MySQL binlog_transaction_compression: the transaction's events
		// are inside, in order (their positions are the payload's).
		for _, inner := range e.Events {
			if err := r.dispatch(inner); err != nil {
				return err
			}
		}
	case *gmrepl.GenericEvent:
		if ev.Header.EventType == gmrepl.XA_PREPARE_LOG_EVENT {
			// XA PREPARE ends the binlog group of an XA transaction.
			r.commit(ev.Header)
		}
	}
	return nil
}

// checkContinuity verifies that each event starts where the previous one
// ended, so that a reconnect (go-mysql resumes on its own) can neither skip
// nor repeat events unnoticed. Events without a position of their own are
// not checked: artificial ones (the fake Rotate sent on connect, which must
// name the position expected), heartbeats and a Format Description re-sent
// when streaming starts mid-file. An event logged with end_log_pos 0 (not
// filled in by go-mysql) suspends the check until the next positioned one.
func (r *Reader) checkContinuity(ev *gmrepl.BinlogEvent) error {
	h := ev.Header
	switch e := ev.Event.(type) {
	case *gmrepl.HeartbeatEvent:
		return nil
	case *gmrepl.FormatDescriptionEvent:
		if h.LogPos >= h.EventSize && h.LogPos-h.EventSize == 4 && r.next == 4 {
			r.next = h.LogPos
		}
		return nil
	case *gmrepl.RotateEvent:
		if h.Flags&gmrepl.LOG_EVENT_ARTIFICIAL_F != 0 || h.LogPos == 0 {
			if r.next != 0 && (string(e.NextLogName) != r.file || uint32(e.Position) != r.next) {
				return r.discontinuity(fmt.Sprintf("%s:%d", e.NextLogName, e.Position))
			}
			return nil
		}
	}
	if h.Flags&gmrepl.LOG_EVENT_ARTIFICIAL_F != 0 {
		return nil
	}
	if h.LogPos == 0 || h.LogPos < h.EventSize {
		// No position (MariaDB 11.4+ without FillZeroLogPos): lose track
		// until the next event that has one.
		r.next = 0
		return nil
	}
	if start := h.LogPos - h.EventSize; r.next != 0 && start != r.next {
		return r.discontinuity(fmt.Sprintf("%s:%d", r.file, start))
	}
	r.next = h.LogPos
	return nil
}

func (r *Reader) discontinuity(got string) error {
	return fmt.Errorf("binlog: the stream of %s is not continuous: the next event should start at %s:%d but the server sent one at %s; events may have been lost or repeated",
		r.tableName(), r.file, r.next, got)
}

// ours reports whether a table map is of the source table or the changelog.
func (r *Reader) ours(tm *gmrepl.TableMapEvent) (table, changelog bool) {
	if tm == nil || string(tm.Schema) != r.cfg.Schema {
		return false, false
	}
	return string(tm.Table) == r.cfg.Table, r.cfg.Changelog != "" && string(tm.Table) == r.cfg.Changelog
}

// decodeRows replaces go-mysql's RowsEvent.Decode: it decodes the rows only
// of the source table and the changelog. Rows events of other tables keep
// their header (and table map) but no Rows. It runs in go-mysql's goroutine
// and only reads immutable configuration.
func (r *Reader) decodeRows(e *gmrepl.RowsEvent, data []byte) error {
	pos, err := e.DecodeHeader(data)
	if err != nil {
		return err
	}
	if t, c := r.ours(e.Table); !t && !c {
		return nil
	}
	return e.DecodeData(pos, data)
}

func (r *Reader) handleTableMap(h *gmrepl.EventHeader, tm *gmrepl.TableMapEvent) error {
	table, changelog := r.ours(tm)
	switch {
	case table:
		if int(tm.ColumnCount) != len(r.cfg.Columns) {
			return fmt.Errorf("binlog: table map of %s at %s has %d columns, osc expects %d: the table's definition changed under osc",
				r.tableName(), r.at(h), tm.ColumnCount, len(r.cfg.Columns))
		}
		if err := checkColumnTypes(r.cfg.Columns, tm.ColumnType, tm.ColumnMeta); err != nil {
			return fmt.Errorf("binlog: table map of %s at %s: %w: the table's definition changed under osc",
				r.tableName(), r.at(h), err)
		}
	case changelog:
		if tm.ColumnCount < 3 {
			return fmt.Errorf("binlog: changelog table `%s`.`%s` has %d columns in the binlog at %s, expected (id, kind, value, ...)",
				r.cfg.Schema, r.cfg.Changelog, tm.ColumnCount, r.at(h))
		}
	}
	return nil
}

func (r *Reader) handleRows(h *gmrepl.EventHeader, e *gmrepl.RowsEvent) error {
	table, changelog := r.ours(e.Table)
	if !table && !changelog {
		return nil
	}
	for _, skipped := range e.SkippedColumns {
		if len(skipped) > 0 {
			return fmt.Errorf("binlog: rows event of `%s`.`%s` at %s lacks %d column(s) of its row image: binlog_row_image must be FULL",
				r.cfg.Schema, e.Table.Table, r.at(h), len(skipped))
		}
	}
	typ := e.Type()
	if changelog {
		if typ != gmrepl.EnumRowsEventTypeInsert {
			return nil
		}
		for _, row := range e.Rows {
			if len(row) < 3 {
				return fmt.Errorf("binlog: changelog row at %s has %d columns, expected (id, kind, value, ...)", r.at(h), len(row))
			}
			kind, err := markerText(row[1])
			if err != nil {
				return fmt.Errorf("binlog: changelog kind at %s: %w", r.at(h), err)
			}
			value, err := markerText(row[2])
			if err != nil {
				return fmt.Errorf("binlog: changelog value at %s: %w", r.at(h), err)
			}
			r.emit(replication.Event{Marker: &replication.Marker{Kind: kind, Value: value}})
		}
		return nil
	}

	var changes []replication.Change
	var err error
	switch typ {
	case gmrepl.EnumRowsEventTypeInsert:
		changes = make([]replication.Change, len(e.Rows))
		for i, row := range e.Rows {
			changes[i].Op = replication.Insert
			if changes[i].After, err = r.norm.row(row); err != nil {
				break
			}
		}
	case gmrepl.EnumRowsEventTypeDelete:
		changes = make([]replication.Change, len(e.Rows))
		for i, row := range e.Rows {
			changes[i].Op = replication.Delete
			if changes[i].Before, err = r.norm.row(row); err != nil {
				break
			}
		}
	case gmrepl.EnumRowsEventTypeUpdate:
		if len(e.Rows)%2 != 0 {
			return fmt.Errorf("binlog: update rows event of %s at %s has an odd number of row images (%d)", r.tableName(), r.at(h), len(e.Rows))
		}
		changes = make([]replication.Change, len(e.Rows)/2)
		for i := range changes {
			changes[i].Op = replication.Update
			if changes[i].Before, err = r.norm.row(e.Rows[2*i]); err != nil {
				break
			}
			if changes[i].After, err = r.norm.row(e.Rows[2*i+1]); err != nil {
				break
			}
		}
	default:
		return fmt.Errorf("binlog: unsupported rows event %s of %s at %s (binlog_row_value_options must be empty)", h.EventType, r.tableName(), r.at(h))
	}
	if err != nil {
		return fmt.Errorf("binlog: decoding a row of %s at %s: %w", r.tableName(), r.at(h), err)
	}
	if len(changes) > 0 {
		r.emit(replication.Event{Changes: changes})
	}
	return nil
}

func markerText(v any) (string, error) {
	switch x := v.(type) {
	case nil:
		return "", nil
	case string:
		return x, nil
	case []byte:
		return string(x), nil
	}
	return "", unexpected(v)
}

func (r *Reader) handleQuery(h *gmrepl.EventHeader, q *gmrepl.QueryEvent) error {
	stmt := strings.TrimSpace(string(q.Query))
	switch firstWord(stmt) {
	case "BEGIN":
		return nil
	case "COMMIT":
		// Transactions on non-transactional engines end with a COMMIT query.
		r.commit(h)
		return nil
	case "ROLLBACK":
		if r.emitted {
			return fmt.Errorf("binlog: a transaction that changed %s was rolled back in the binlog at %s (it mixed transactional and non-transactional tables); changes already streamed cannot be undone",
				r.tableName(), r.at(h))
		}
		return nil
	case "XA":
		if strings.HasPrefix(strings.ToUpper(stmt), "XA COMMIT") {
			r.commit(h)
		}
		return nil
	}
	if !alter.IsDDL(stmt, alter.MySQL) {
		switch firstWord(stmt) {
		case "INSERT", "UPDATE", "DELETE", "REPLACE", "LOAD":
			// Logged as a statement (a session with binlog_format other
			// than ROW): its rows are not in the stream.
			if r.ddlOnTable(string(q.Schema), stmt) {
				return fmt.Errorf("binlog: a statement naming %s was logged as a statement, not as rows, at %s: %s; binlog_format must be ROW for every session",
					r.tableName(), r.at(h), truncate(stmt, maxStatementInError))
			}
		}
		return nil
	}
	if r.ddlOnTable(string(q.Schema), stmt) {
		return fmt.Errorf("DDL on %s detected in the binlog at %s: %s; rerun osc once the other change is done",
			r.tableName(), r.at(h), truncate(stmt, maxStatementInError))
	}
	return nil
}

// ddlOnTable reports whether a statement, run with the session's
// current database sessionSchema, names the source table. A statement run
// from another database counts when its text mentions our schema at all
// (it may qualify the table as `schema`.`t`; alter.References deliberately
// skips qualifiers). Both checks err towards a false alarm, never a miss.
// alter.References matches whole identifiers, so osc's own _<t>_new,
// _<t>_old, ... tables do not match.
func (r *Reader) ddlOnTable(sessionSchema, stmt string) bool {
	if sessionSchema != r.cfg.Schema && !containsFold(stmt, r.cfg.Schema) {
		return false
	}
	return alter.References(stmt, r.cfg.Table, alter.MySQL)
}

func containsFold(s, sub string) bool {
	return strings.Contains(strings.ToLower(s), strings.ToLower(sub))
}

// firstWord returns the first keyword of a statement, upper-cased, after
// leading comments (other than /*! ... */, whose body is code).
func firstWord(stmt string) string {
	for {
		stmt = strings.TrimLeft(stmt, " \t\r\n")
		switch {
		case strings.HasPrefix(stmt, "/*") && !strings.HasPrefix(stmt, "/*!"):
			end := strings.Index(stmt[2:], "*/")
			if end < 0 {
				return ""
			}
			stmt = stmt[2+end+2:]
			continue
		case strings.HasPrefix(stmt, "#") || strings.HasPrefix(stmt, "-- "):
			end := strings.IndexByte(stmt, '\n')
			if end < 0 {
				return ""
			}
			stmt = stmt[end+1:]
			continue
		}
		break
	}
	end := strings.IndexAny(stmt, " \t\r\n;/(")
	if end < 0 {
		end = len(stmt)
	}
	if end > 16 {
		return ""
	}
	return strings.ToUpper(stmt[:end])
}

// truncate shortens s to at most n bytes without splitting a UTF-8 sequence.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "..."
}
