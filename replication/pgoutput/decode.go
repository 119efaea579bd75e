package pgoutput

import (
	"encoding/binary"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pglogrepl"

	"github.com/osc-dev/osc/replication"
)

// ErrTableChanged is wrapped by the errors that end the stream because the
// source table changed under the run: a Relation message that differs from
// the table's definition, a TRUNCATE, or changes of another table arriving
// through the publication.
var ErrTableChanged = errors.New("the source table's definition changed (DDL or TRUNCATE during the run); the run must abort")

// pgoutput message types (protocol version 1).
const (
	msgBegin    = 'B'
	msgCommit   = 'C'
	msgOrigin   = 'O'
	msgRelation = 'R'
	msgType     = 'Y'
	msgInsert   = 'I'
	msgUpdate   = 'U'
	msgDelete   = 'D'
	msgTruncate = 'T'
	msgMessage  = 'M'
)

// Tuple kinds and column kinds.
const (
	tupleNew = 'N'
	tupleKey = 'K'
	tupleOld = 'O'

	colNull      = 'n'
	colUnchanged = 'u'
	colText      = 't'
	colBinary    = 'b'
)

// relationIdentity is the flag of a Relation message column that is part of
// the replica identity (all columns with REPLICA IDENTITY FULL).
const relationIdentity = 1

// Slab sizes: rows and single-change slices are carved out of shared
// arrays to keep the allocations per row event low.
const (
	valueSlab  = 2048
	changeSlab = 256
)

var unchanged any = replication.Unchanged{}

// decoder turns pgoutput messages (protocol version 1) into events. It is
// not safe for concurrent use; its state is the stream's: the table's
// Relation message and whether a transaction is open.
type decoder struct {
	columns  []Column
	relation uint32
	prefix   string

	rel      *pglogrepl.RelationMessage // the first Relation message of the table
	identity []bool                     // per column: part of the replica identity

	inTxn bool
	// lastCommitEnd is the end LSN of the last COMMIT decoded.
	lastCommitEnd uint64

	values  []any
	changes []replication.Change
}

func newDecoder(columns []Column, relation uint32, markerPrefix string) *decoder {
	return &decoder{columns: columns, relation: relation, prefix: markerPrefix}
}

// decode decodes one pgoutput message. ok is false for messages that
// produce no event (BEGIN, Relation, Type, Origin, messages of other
// prefixes).
func (d *decoder) decode(msg []byte) (ev replication.Event, ok bool, err error) {
	if len(msg) == 0 {
		return ev, false, errors.New("empty pgoutput message")
	}
	body := msg[1:]
	switch msg[0] {
	case msgInsert:
		return d.insert(body)
	case msgUpdate:
		return d.update(body)
	case msgDelete:
		return d.delete(body)
	case msgBegin:
		if len(body) < 20 {
			return ev, false, fmt.Errorf("BEGIN message of %d bytes, want 20", len(body))
		}
		if d.inTxn {
			return ev, false, errors.New("BEGIN inside a transaction")
		}
		d.inTxn = true
		return ev, false, nil
	case msgCommit:
		if len(body) < 25 {
			return ev, false, fmt.Errorf("COMMIT message of %d bytes, want 25", len(body))
		}
		if !d.inTxn {
			return ev, false, errors.New("COMMIT outside a transaction")
		}
		d.inTxn = false
		end := binary.BigEndian.Uint64(body[9:17])
		d.lastCommitEnd = end
		return replication.Event{Commit: true, Pos: FormatLSN(end), Ack: end}, true, nil
	case msgMessage:
		return d.message(body)
	case msgRelation:
		return ev, false, d.relationMessage(msg)
	case msgTruncate:
		return ev, false, fmt.Errorf("%w: TRUNCATE", ErrTableChanged)
	case msgType, msgOrigin:
		return ev, false, nil
	}
	return ev, false, fmt.Errorf("unexpected pgoutput message type %q", msg[0])
}

// relationMessage checks a Relation message: the first one must describe
// the table as read from the catalog, later ones must repeat it exactly
// (the server resends it after a cache invalidation).
func (d *decoder) relationMessage(msg []byte) error {
	m, err := parseRelation(msg)
	if err != nil {
		return err
	}
	if m.RelationID != d.relation {
		return fmt.Errorf("%w: a Relation message for relation %d (%s.%s), which is not the table (%d), arrived through the publication",
			ErrTableChanged, m.RelationID, m.Namespace, m.RelationName, d.relation)
	}
	if d.rel != nil {
		if diff := relationDiff(d.rel, m); diff != "" {
			return fmt.Errorf("%w: the Relation message of %s.%s changed: %s", ErrTableChanged, d.rel.Namespace, d.rel.RelationName, diff)
		}
		return nil
	}
	if len(m.Columns) != len(d.columns) {
		return fmt.Errorf("%w: the stream's %s.%s has %d columns (%s), the catalog had %d (%s)", ErrTableChanged,
			m.Namespace, m.RelationName, len(m.Columns), relationColumns(m), len(d.columns), catalogColumns(d.columns))
	}
	identity := make([]bool, len(m.Columns))
	n := 0
	for i, c := range m.Columns {
		want := d.columns[i]
		if c.Name != want.Name || c.DataType != want.TypeOID {
			return fmt.Errorf("%w: column %d of the stream's %s.%s is %q (type %d), the catalog had %q (type %d)", ErrTableChanged,
				i+1, m.Namespace, m.RelationName, c.Name, c.DataType, want.Name, want.TypeOID)
		}
		if c.Flags&relationIdentity != 0 {
			identity[i] = true
			n++
		}
	}
	if n == 0 {
		return fmt.Errorf("%s.%s has no replica identity: updates and deletes cannot be applied", m.Namespace, m.RelationName)
	}
	d.rel, d.identity = m, identity
	return nil
}

// parseRelation decodes a Relation message with pglogrepl, which does not
// check bounds: a malformed message becomes an error, not a panic.
func parseRelation(msg []byte) (m *pglogrepl.RelationMessage, err error) {
	defer func() {
		if p := recover(); p != nil {
			m, err = nil, fmt.Errorf("malformed Relation message (%v)", p)
		}
	}()
	m = new(pglogrepl.RelationMessage)
	if err := m.Decode(msg[1:]); err != nil {
		return nil, fmt.Errorf("malformed Relation message: %w", err)
	}
	return m, nil
}

// relationDiff describes how b differs from a; "" when it does not.
func relationDiff(a, b *pglogrepl.RelationMessage) string {
	var diffs []string
	if a.Namespace != b.Namespace || a.RelationName != b.RelationName {
		diffs = append(diffs, fmt.Sprintf("renamed to %s.%s", b.Namespace, b.RelationName))
	}
	if a.ReplicaIdentity != b.ReplicaIdentity {
		diffs = append(diffs, fmt.Sprintf("replica identity %q, was %q", b.ReplicaIdentity, a.ReplicaIdentity))
	}
	if len(a.Columns) != len(b.Columns) {
		diffs = append(diffs, fmt.Sprintf("columns (%s), were (%s)", relationColumns(b), relationColumns(a)))
	} else {
		for i, ca := range a.Columns {
			cb := b.Columns[i]
			if *ca != *cb {
				diffs = append(diffs, fmt.Sprintf("column %d is %s, was %s", i+1, describeColumn(cb), describeColumn(ca)))
			}
		}
	}
	return strings.Join(diffs, "; ")
}

func describeColumn(c *pglogrepl.RelationMessageColumn) string {
	s := fmt.Sprintf("%q type %d typmod %d", c.Name, c.DataType, c.TypeModifier)
	if c.Flags&relationIdentity != 0 {
		s += " (replica identity)"
	}
	return s
}

func relationColumns(m *pglogrepl.RelationMessage) string {
	names := make([]string, len(m.Columns))
	for i, c := range m.Columns {
		names[i] = c.Name
	}
	return strings.Join(names, ", ")
}

func catalogColumns(cols []Column) string {
	names := make([]string, len(cols))
	for i, c := range cols {
		names[i] = c.Name
	}
	return strings.Join(names, ", ")
}

// rowChange checks the relation of a row change message and returns the
// rest of the message.
func (d *decoder) rowChange(body []byte, what string) ([]byte, error) {
	if len(body) < 5 {
		return nil, fmt.Errorf("truncated %s message", what)
	}
	rel := binary.BigEndian.Uint32(body)
	if rel != d.relation {
		return nil, fmt.Errorf("%w: %s of relation %d, which is not the table (%d), arrived through the publication",
			ErrTableChanged, what, rel, d.relation)
	}
	if d.rel == nil {
		return nil, fmt.Errorf("%s before the table's Relation message", what)
	}
	if !d.inTxn {
		return nil, fmt.Errorf("%s outside a transaction", what)
	}
	return body[4:], nil
}

func (d *decoder) insert(body []byte) (replication.Event, bool, error) {
	rest, err := d.rowChange(body, "INSERT")
	if err != nil {
		return replication.Event{}, false, err
	}
	if rest[0] != tupleNew {
		return replication.Event{}, false, fmt.Errorf("INSERT with tuple type %q, want 'N'", rest[0])
	}
	after, n, err := d.tuple(rest[1:], tupleNew, false)
	if err != nil {
		return replication.Event{}, false, fmt.Errorf("INSERT: %w", err)
	}
	if n != len(rest)-1 {
		return replication.Event{}, false, fmt.Errorf("INSERT: %d bytes after the tuple", len(rest)-1-n)
	}
	return d.event(replication.Insert, nil, after), true, nil
}

func (d *decoder) update(body []byte) (replication.Event, bool, error) {
	rest, err := d.rowChange(body, "UPDATE")
	if err != nil {
		return replication.Event{}, false, err
	}
	var before []any
	if kind := rest[0]; kind == tupleKey || kind == tupleOld {
		var n int
		before, n, err = d.tuple(rest[1:], kind, true)
		if err != nil {
			return replication.Event{}, false, fmt.Errorf("UPDATE old tuple: %w", err)
		}
		rest = rest[1+n:]
		if len(rest) == 0 {
			return replication.Event{}, false, errors.New("UPDATE without its new tuple")
		}
	}
	if rest[0] != tupleNew {
		return replication.Event{}, false, fmt.Errorf("UPDATE with tuple type %q, want 'K', 'O' or 'N'", rest[0])
	}
	after, n, err := d.tuple(rest[1:], tupleNew, true)
	if err != nil {
		return replication.Event{}, false, fmt.Errorf("UPDATE new tuple: %w", err)
	}
	if n != len(rest)-1 {
		return replication.Event{}, false, fmt.Errorf("UPDATE: %d bytes after the new tuple", len(rest)-1-n)
	}
	if before == nil {
		// The replica identity did not change and was not sent: take it
		// from the new row.
		before = d.row()
		for i, id := range d.identity {
			if !id {
				before[i] = unchanged
				continue
			}
			if _, ok := after[i].(replication.Unchanged); ok {
				return replication.Event{}, false, fmt.Errorf("UPDATE without the old key, and replica identity column %q arrived as an unchanged TOASTed value: the row cannot be identified", d.columns[i].Name)
			}
			before[i] = after[i]
		}
	}
	return d.event(replication.Update, before, after), true, nil
}

func (d *decoder) delete(body []byte) (replication.Event, bool, error) {
	rest, err := d.rowChange(body, "DELETE")
	if err != nil {
		return replication.Event{}, false, err
	}
	kind := rest[0]
	if kind != tupleKey && kind != tupleOld {
		return replication.Event{}, false, fmt.Errorf("DELETE with tuple type %q, want 'K' or 'O'", kind)
	}
	before, n, err := d.tuple(rest[1:], kind, true)
	if err != nil {
		return replication.Event{}, false, fmt.Errorf("DELETE: %w", err)
	}
	if n != len(rest)-1 {
		return replication.Event{}, false, fmt.Errorf("DELETE: %d bytes after the tuple", len(rest)-1-n)
	}
	return d.event(replication.Delete, before, nil), true, nil
}

// event wraps one change into an event, its one-element Changes slice
// carved out of a shared array.
func (d *decoder) event(op replication.Op, before, after []any) replication.Event {
	if len(d.changes) == 0 {
		d.changes = make([]replication.Change, changeSlab)
	}
	c := d.changes[:1:1]
	d.changes = d.changes[1:]
	c[0] = replication.Change{Op: op, Before: before, After: after}
	return replication.Event{Changes: c}
}

// row returns a fresh row of len(columns) values, carved out of a shared
// array.
func (d *decoder) row() []any {
	n := len(d.columns)
	if len(d.values) < n {
		d.values = make([]any, max(valueSlab, n))
	}
	r := d.values[:n:n]
	d.values = d.values[n:]
	return r
}

// tuple decodes a TupleData at the start of src into a row and returns the
// bytes it used. kind is the tuple's type ('N', 'K' or 'O'); unchangedOK
// is false for an insert's tuple, which must carry every value.
//
// The text of all values goes into one string, so a row costs one string
// allocation plus one per non-empty value stored in an interface.
func (d *decoder) tuple(src []byte, kind byte, unchangedOK bool) ([]any, int, error) {
	if len(src) < 2 {
		return nil, 0, errors.New("truncated tuple")
	}
	ncols := int(binary.BigEndian.Uint16(src))
	if ncols != len(d.columns) {
		return nil, 0, fmt.Errorf("%w: tuple of %d columns, the table has %d", ErrTableChanged, ncols, len(d.columns))
	}
	// First pass: check the layout and size the text.
	off, text := 2, 0
	for i := range ncols {
		if off >= len(src) {
			return nil, 0, errors.New("truncated tuple")
		}
		switch src[off] {
		case colText:
			if off+5 > len(src) {
				return nil, 0, errors.New("truncated tuple")
			}
			l := int(binary.BigEndian.Uint32(src[off+1:]))
			off += 5
			if l < 0 || l > len(src)-off {
				return nil, 0, errors.New("truncated tuple")
			}
			off += l
			text += l
		case colNull:
			off++
			if kind == tupleKey && d.identity[i] {
				return nil, 0, fmt.Errorf("key tuple has NULL for replica identity column %q", d.columns[i].Name)
			}
		case colUnchanged:
			off++
			if !unchangedOK {
				return nil, 0, fmt.Errorf("unchanged TOASTed value for column %q in a new row", d.columns[i].Name)
			}
			if kind != tupleNew && d.identity[i] {
				return nil, 0, fmt.Errorf("old tuple has no value (unchanged TOAST) for replica identity column %q: the row's key is unknown", d.columns[i].Name)
			}
		case colBinary:
			return nil, 0, fmt.Errorf("binary value for column %q (binary mode is not requested)", d.columns[i].Name)
		default:
			return nil, 0, fmt.Errorf("column %q has unknown kind %q", d.columns[i].Name, src[off])
		}
	}
	end := off

	var all string
	if text > 0 {
		var sb strings.Builder
		sb.Grow(text)
		off = 2
		for range ncols {
			if src[off] != colText {
				off++
				continue
			}
			l := int(binary.BigEndian.Uint32(src[off+1:]))
			off += 5
			sb.Write(src[off : off+l])
			off += l
		}
		all = sb.String()
	}

	row := d.row()
	off, pos := 2, 0
	for i := range ncols {
		switch src[off] {
		case colText:
			l := int(binary.BigEndian.Uint32(src[off+1:]))
			off += 5 + l
			row[i] = all[pos : pos+l]
			pos += l
		case colNull:
			off++
			if kind == tupleKey {
				// Not part of the identity: the key tuple does not carry it.
				row[i] = unchanged
			} else {
				row[i] = nil
			}
		case colUnchanged:
			off++
			row[i] = unchanged
		}
	}
	return row, end, nil
}

// message decodes a logical decoding message (pg_logical_emit_message).
// Those with osc's prefix become markers, in place, transactional or not.
func (d *decoder) message(body []byte) (replication.Event, bool, error) {
	// flags (1), LSN (8), prefix (C string), content length (4), content.
	if len(body) < 9 {
		return replication.Event{}, false, errors.New("truncated logical decoding message")
	}
	rest := body[9:]
	nul := -1
	for i, b := range rest {
		if b == 0 {
			nul = i
			break
		}
	}
	if nul < 0 || len(rest) < nul+5 {
		return replication.Event{}, false, errors.New("truncated logical decoding message")
	}
	prefix := rest[:nul]
	rest = rest[nul+1:]
	l := int(binary.BigEndian.Uint32(rest))
	rest = rest[4:]
	if l < 0 || l > len(rest) {
		return replication.Event{}, false, errors.New("truncated logical decoding message")
	}
	if string(prefix) != d.prefix {
		return replication.Event{}, false, nil
	}
	kind, value, _ := strings.Cut(string(rest[:l]), ":")
	return replication.Event{Marker: &replication.Marker{Kind: kind, Value: value}}, true, nil
}

// FormatLSN formats an LSN the way PostgreSQL does (pg_lsn's text form,
// e.g. "0/16B3748").
func FormatLSN(lsn uint64) string {
	var b [17]byte
	i := len(b)
	i = appendHex(&b, i, uint32(lsn))
	i--
	b[i] = '/'
	i = appendHex(&b, i, uint32(lsn>>32))
	return string(b[i:])
}

// appendHex writes v in upper-case hex before b[i] and returns the new start.
func appendHex(b *[17]byte, i int, v uint32) int {
	const digits = "0123456789ABCDEF"
	for {
		i--
		b[i] = digits[v&0xf]
		v >>= 4
		if v == 0 {
			return i
		}
	}
}
