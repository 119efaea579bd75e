package pgoutput

import (
	"encoding/binary"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/jackc/pglogrepl"

	"github.com/osc-dev/osc/replication"
)

// Builders of pgoutput protocol version 1 messages, as the server sends
// them (https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html).

type relCol struct {
	flags  uint8
	name   string
	typ    uint32
	typmod int32
}

func relationMsg(oid uint32, ns, name string, ident byte, cols ...relCol) []byte {
	b := []byte{'R'}
	b = binary.BigEndian.AppendUint32(b, oid)
	b = append(append(b, ns...), 0)
	b = append(append(b, name...), 0)
	b = append(b, ident)
	b = binary.BigEndian.AppendUint16(b, uint16(len(cols)))
	for _, c := range cols {
		b = append(b, c.flags)
		b = append(append(b, c.name...), 0)
		b = binary.BigEndian.AppendUint32(b, c.typ)
		b = binary.BigEndian.AppendUint32(b, uint32(c.typmod))
	}
	return b
}

// col is one column of a TupleData: "n", "u", or "t:<text>" / "b:<bytes>".
func tupleData(cols ...string) []byte {
	b := binary.BigEndian.AppendUint16(nil, uint16(len(cols)))
	for _, c := range cols {
		switch {
		case c == "n" || c == "u":
			b = append(b, c[0])
		case strings.HasPrefix(c, "t:") || strings.HasPrefix(c, "b:"):
			b = append(b, c[0])
			b = binary.BigEndian.AppendUint32(b, uint32(len(c)-2))
			b = append(b, c[2:]...)
		default:
			panic("bad tuple column " + c)
		}
	}
	return b
}

func insertMsg(oid uint32, cols ...string) []byte {
	b := binary.BigEndian.AppendUint32([]byte{'I'}, oid)
	return append(append(b, 'N'), tupleData(cols...)...)
}

// updateMsg: oldKind is 0 (no old tuple), 'K' or 'O'.
func updateMsg(oid uint32, oldKind byte, old, new []string) []byte {
	b := binary.BigEndian.AppendUint32([]byte{'U'}, oid)
	if oldKind != 0 {
		b = append(append(b, oldKind), tupleData(old...)...)
	}
	return append(append(b, 'N'), tupleData(new...)...)
}

func deleteMsg(oid uint32, kind byte, cols ...string) []byte {
	b := binary.BigEndian.AppendUint32([]byte{'D'}, oid)
	return append(append(b, kind), tupleData(cols...)...)
}

func beginMsg() []byte {
	b := []byte{'B'}
	b = binary.BigEndian.AppendUint64(b, 0x100)
	b = binary.BigEndian.AppendUint64(b, 0)
	return binary.BigEndian.AppendUint32(b, 777)
}

func commitMsg(commit, end uint64) []byte {
	b := []byte{'C', 0}
	b = binary.BigEndian.AppendUint64(b, commit)
	b = binary.BigEndian.AppendUint64(b, end)
	return binary.BigEndian.AppendUint64(b, 0)
}

func messageMsg(transactional bool, prefix, content string) []byte {
	b := []byte{'M', 0}
	if transactional {
		b[1] = 1
	}
	b = binary.BigEndian.AppendUint64(b, 0x200)
	b = append(append(b, prefix...), 0)
	b = binary.BigEndian.AppendUint32(b, uint32(len(content)))
	return append(b, content...)
}

func truncateMsg(oids ...uint32) []byte {
	b := binary.BigEndian.AppendUint32([]byte{'T'}, uint32(len(oids)))
	b = append(b, 0)
	for _, o := range oids {
		b = binary.BigEndian.AppendUint32(b, o)
	}
	return b
}

const (
	testOID    = 16384
	int4OID    = 23
	textOID    = 25
	testPrefix = "osc"
)

// The test table: id int PRIMARY KEY, name text, body text.
var testColumns = []Column{{"id", int4OID}, {"name", textOID}, {"body", textOID}}

func testRelation() []byte {
	return relationMsg(testOID, "public", "t", 'd',
		relCol{1, "id", int4OID, -1}, relCol{0, "name", textOID, -1}, relCol{0, "body", textOID, -1})
}

// newTestDecoder returns a decoder that has seen the table's Relation
// message and a BEGIN.
func newTestDecoder(t *testing.T) *decoder {
	t.Helper()
	d := newDecoder(testColumns, testOID, testPrefix)
	mustNoEvent(t, d, beginMsg())
	mustNoEvent(t, d, testRelation())
	return d
}

func mustNoEvent(t *testing.T, d *decoder, msg []byte) {
	t.Helper()
	ev, ok, err := d.decode(msg)
	if err != nil {
		t.Fatalf("decode %q: %v", msg[0], err)
	}
	if ok {
		t.Fatalf("decode %q: unexpected event %+v", msg[0], ev)
	}
}

func mustEvent(t *testing.T, d *decoder, msg []byte) replication.Event {
	t.Helper()
	ev, ok, err := d.decode(msg)
	if err != nil {
		t.Fatalf("decode %q: %v", msg[0], err)
	}
	if !ok {
		t.Fatalf("decode %q: no event", msg[0])
	}
	return ev
}

func mustChange(t *testing.T, d *decoder, msg []byte) replication.Change {
	t.Helper()
	ev := mustEvent(t, d, msg)
	if len(ev.Changes) != 1 || ev.Marker != nil || ev.Commit {
		t.Fatalf("want one change, got %+v", ev)
	}
	if cap(ev.Changes) != 1 {
		t.Fatalf("Changes has capacity %d: appending to it would overwrite the next event", cap(ev.Changes))
	}
	return ev.Changes[0]
}

func mustFail(t *testing.T, d *decoder, msg []byte, want ...string) error {
	t.Helper()
	_, _, err := d.decode(msg)
	if err == nil {
		t.Fatalf("decode %q: want an error", msg[0])
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q does not mention %q", err, w)
		}
	}
	return err
}

var u = replication.Unchanged{}

func row(vals ...any) []any { return vals }

func checkChange(t *testing.T, got replication.Change, op replication.Op, before, after []any) {
	t.Helper()
	want := replication.Change{Op: op, Before: before, After: after}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %s %#v -> %#v\nwant %s %#v -> %#v", got.Op, got.Before, got.After, op, before, after)
	}
	for _, r := range [][]any{got.Before, got.After} {
		if r != nil && cap(r) != len(r) {
			t.Errorf("row has capacity %d > len %d: appending to it would overwrite the next row", cap(r), len(r))
		}
	}
}

func TestBuildersMatchPglogrepl(t *testing.T) {
	m, err := pglogrepl.Parse(testRelation())
	if err != nil {
		t.Fatal(err)
	}
	rel := m.(*pglogrepl.RelationMessage)
	if rel.RelationID != testOID || len(rel.Columns) != 3 || rel.Columns[0].Flags != 1 || rel.Columns[2].Name != "body" {
		t.Fatalf("%+v", rel)
	}
	m, err = pglogrepl.Parse(updateMsg(testOID, 'K', []string{"t:1", "n", "n"}, []string{"t:2", "t:x", "u"}))
	if err != nil {
		t.Fatal(err)
	}
	up := m.(*pglogrepl.UpdateMessage)
	if up.OldTupleType != 'K' || string(up.NewTuple.Columns[1].Data) != "x" || up.NewTuple.Columns[2].DataType != 'u' {
		t.Fatalf("%+v", up)
	}
	m, err = pglogrepl.Parse(messageMsg(false, "osc", "k:v"))
	if err != nil {
		t.Fatal(err)
	}
	if lm := m.(*pglogrepl.LogicalDecodingMessage); lm.Prefix != "osc" || string(lm.Content) != "k:v" || lm.Transactional {
		t.Fatalf("%+v", lm)
	}
	m, err = pglogrepl.Parse(commitMsg(0x10, 0x18))
	if err != nil {
		t.Fatal(err)
	}
	if c := m.(*pglogrepl.CommitMessage); c.CommitLSN != 0x10 || c.TransactionEndLSN != 0x18 {
		t.Fatalf("%+v", c)
	}
}

func TestDecodeInsert(t *testing.T) {
	d := newTestDecoder(t)
	c := mustChange(t, d, insertMsg(testOID, "t:1", "t:héllo", "n"))
	checkChange(t, c, replication.Insert, nil, row("1", "héllo", nil))
	c = mustChange(t, d, insertMsg(testOID, "t:2", "t:", "t:x"))
	checkChange(t, c, replication.Insert, nil, row("2", "", "x"))
}

func TestDecodeUpdate(t *testing.T) {
	d := newTestDecoder(t)

	// Key unchanged, default identity: no old tuple; the key comes from the
	// new row, the rest of Before is Unchanged. An unchanged TOASTed value
	// in the new row is Unchanged.
	c := mustChange(t, d, updateMsg(testOID, 0, nil, []string{"t:1", "t:a", "u"}))
	checkChange(t, c, replication.Update, row("1", u, u), row("1", "a", u))

	c = mustChange(t, d, updateMsg(testOID, 0, nil, []string{"t:1", "n", "t:big"}))
	checkChange(t, c, replication.Update, row("1", u, u), row("1", nil, "big"))

	// Key changed: 'K' old tuple; its 'n' columns are outside the identity.
	c = mustChange(t, d, updateMsg(testOID, 'K', []string{"t:1", "n", "n"}, []string{"t:2", "t:a", "u"}))
	checkChange(t, c, replication.Update, row("1", u, u), row("2", "a", u))

	// REPLICA IDENTITY FULL: 'O' old tuple; 'n' is NULL.
	c = mustChange(t, d, updateMsg(testOID, 'O', []string{"t:1", "n", "t:b"}, []string{"t:1", "t:a", "t:b"}))
	checkChange(t, c, replication.Update, row("1", nil, "b"), row("1", "a", "b"))
}

func TestDecodeDelete(t *testing.T) {
	d := newTestDecoder(t)
	c := mustChange(t, d, deleteMsg(testOID, 'K', "t:7", "n", "n"))
	checkChange(t, c, replication.Delete, row("7", u, u), nil)
	c = mustChange(t, d, deleteMsg(testOID, 'O', "t:7", "n", "t:x"))
	checkChange(t, c, replication.Delete, row("7", nil, "x"), nil)
}

func TestDecodeCompositeIdentity(t *testing.T) {
	d := newDecoder([]Column{{"a", int4OID}, {"v", textOID}, {"b", textOID}}, testOID, testPrefix)
	mustNoEvent(t, d, beginMsg())
	mustNoEvent(t, d, relationMsg(testOID, "public", "t", 'd',
		relCol{1, "a", int4OID, -1}, relCol{0, "v", textOID, -1}, relCol{1, "b", textOID, -1}))
	c := mustChange(t, d, updateMsg(testOID, 0, nil, []string{"t:1", "t:x", "t:k"}))
	checkChange(t, c, replication.Update, row("1", u, "k"), row("1", "x", "k"))
	c = mustChange(t, d, deleteMsg(testOID, 'K', "t:1", "n", "t:k"))
	checkChange(t, c, replication.Delete, row("1", u, "k"), nil)
}

func TestDecodeUnchangedKey(t *testing.T) {
	d := newTestDecoder(t)
	// A TOASTed key column left unchanged, without an old key tuple: the
	// row cannot be identified.
	mustFail(t, d, updateMsg(testOID, 0, nil, []string{"u", "t:a", "t:b"}), `replica identity column "id"`, "unchanged TOASTed")
	// Nor can it from an old tuple without the key.
	mustFail(t, newTestDecoder(t), updateMsg(testOID, 'K', []string{"u", "n", "n"}, []string{"t:1", "t:a", "t:b"}), `"id"`)
	mustFail(t, newTestDecoder(t), deleteMsg(testOID, 'K', "n", "n", "n"), `NULL for replica identity column "id"`)
	// An insert must carry every value.
	mustFail(t, newTestDecoder(t), insertMsg(testOID, "t:1", "u", "t:b"), `"name"`)
	// Binary values are never requested.
	mustFail(t, newTestDecoder(t), insertMsg(testOID, "t:1", "b:xx", "t:b"), "binary", `"name"`)
}

func TestDecodeCommitAndMarkers(t *testing.T) {
	d := newTestDecoder(t)
	ev := mustEvent(t, d, messageMsg(true, testPrefix, "fence:42"))
	if ev.Marker == nil || *ev.Marker != (replication.Marker{Kind: "fence", Value: "42"}) || ev.Changes != nil || ev.Commit {
		t.Fatalf("%+v", ev)
	}
	mustNoEvent(t, d, messageMsg(true, "other", "fence:1"))
	mustNoEvent(t, d, messageMsg(false, testPrefix+"x", "fence:1"))
	ev = mustEvent(t, d, commitMsg(0x1_0000_0010, 0x1_0000_00A8))
	if !ev.Commit || ev.Ack != 0x1_0000_00A8 || ev.Pos != "1/A8" || ev.Changes != nil || ev.Marker != nil {
		t.Fatalf("%+v", ev)
	}
	if d.inTxn || d.lastCommitEnd != 0x1_0000_00A8 {
		t.Fatalf("inTxn %v lastCommitEnd %x", d.inTxn, d.lastCommitEnd)
	}
	// Non-transactional, outside a transaction; the value keeps its colons.
	ev = mustEvent(t, d, messageMsg(false, testPrefix, "heartbeat:2024-01-01 10:00:00"))
	if *ev.Marker != (replication.Marker{Kind: "heartbeat", Value: "2024-01-01 10:00:00"}) {
		t.Fatalf("%+v", ev.Marker)
	}
	ev = mustEvent(t, d, messageMsg(false, testPrefix, "ready"))
	if *ev.Marker != (replication.Marker{Kind: "ready"}) {
		t.Fatalf("%+v", ev.Marker)
	}
	// Type and Origin messages are ignored.
	mustNoEvent(t, d, append(binary.BigEndian.AppendUint32([]byte{'Y'}, 99999), "public\x00mytype\x00"...))
	mustFail(t, d, commitMsg(1, 2), "COMMIT outside a transaction")
}

func TestDecodeOutsideTransaction(t *testing.T) {
	d := newTestDecoder(t)
	mustEvent(t, d, commitMsg(1, 2))
	mustFail(t, d, insertMsg(testOID, "t:1", "n", "n"), "outside a transaction")
	d = newDecoder(testColumns, testOID, testPrefix)
	mustNoEvent(t, d, beginMsg())
	mustFail(t, d, insertMsg(testOID, "t:1", "n", "n"), "before the table's Relation message")
}

func TestDecodeRelation(t *testing.T) {
	cols := func(mod func(c []relCol) []relCol) []relCol {
		c := []relCol{{1, "id", int4OID, -1}, {0, "name", textOID, -1}, {0, "body", textOID, -1}}
		return mod(c)
	}
	rel := func(c []relCol) []byte { return relationMsg(testOID, "public", "t", 'd', c...) }
	same := func(c []relCol) []relCol { return c }

	t.Run("first must match the catalog", func(t *testing.T) {
		for name, msg := range map[string][]byte{
			"name":  rel(cols(func(c []relCol) []relCol { c[1].name = "nom"; return c })),
			"type":  rel(cols(func(c []relCol) []relCol { c[0].typ = 20; return c })),
			"order": rel(cols(func(c []relCol) []relCol { c[1], c[2] = c[2], c[1]; return c })),
			"more":  rel(cols(func(c []relCol) []relCol { return append(c, relCol{0, "x", int4OID, -1}) })),
			"fewer": rel(cols(func(c []relCol) []relCol { return c[:2] })),
			"oid":   relationMsg(testOID+1, "public", "u", 'd', cols(same)...),
		} {
			d := newDecoder(testColumns, testOID, testPrefix)
			mustNoEvent(t, d, beginMsg())
			err := mustFail(t, d, msg, "DDL or TRUNCATE", "must abort")
			if !errors.Is(err, ErrTableChanged) {
				t.Errorf("%s: %v is not ErrTableChanged", name, err)
			}
		}
	})
	t.Run("no replica identity", func(t *testing.T) {
		d := newDecoder(testColumns, testOID, testPrefix)
		mustFail(t, d, rel(cols(func(c []relCol) []relCol { c[0].flags = 0; return c })), "no replica identity")
	})
	t.Run("identical repeat is fine", func(t *testing.T) {
		d := newTestDecoder(t)
		mustNoEvent(t, d, testRelation())
		mustChange(t, d, insertMsg(testOID, "t:1", "n", "n"))
		mustNoEvent(t, d, testRelation())
	})
	t.Run("later change", func(t *testing.T) {
		for name, msg := range map[string][]byte{
			"column name":  rel(cols(func(c []relCol) []relCol { c[1].name = "nom"; return c })),
			"type":         rel(cols(func(c []relCol) []relCol { c[2].typ = 1043; return c })),
			"typmod":       rel(cols(func(c []relCol) []relCol { c[2].typmod = 14; return c })),
			"identity":     rel(cols(func(c []relCol) []relCol { c[1].flags = 1; return c })),
			"added column": rel(cols(func(c []relCol) []relCol { return append(c, relCol{0, "x", int4OID, -1}) })),
			"dropped":      rel(cols(func(c []relCol) []relCol { return c[:2] })),
			"full":         relationMsg(testOID, "public", "t", 'f', cols(same)...),
			"renamed":      relationMsg(testOID, "public", "t2", 'd', cols(same)...),
			"other oid":    relationMsg(testOID+1, "public", "t", 'd', cols(same)...),
		} {
			d := newTestDecoder(t)
			err := mustFail(t, d, msg, "DDL or TRUNCATE", "must abort")
			if !errors.Is(err, ErrTableChanged) {
				t.Errorf("%s: %v is not ErrTableChanged", name, err)
			}
			t.Logf("%s: %v", name, err)
		}
	})
	t.Run("truncate", func(t *testing.T) {
		err := mustFail(t, newTestDecoder(t), truncateMsg(testOID), "TRUNCATE", "must abort")
		if !errors.Is(err, ErrTableChanged) {
			t.Error(err)
		}
	})
	t.Run("change of another table", func(t *testing.T) {
		err := mustFail(t, newTestDecoder(t), insertMsg(testOID+1, "t:1", "n", "n"), "must abort")
		if !errors.Is(err, ErrTableChanged) {
			t.Error(err)
		}
	})
	t.Run("tuple of another width", func(t *testing.T) {
		mustFail(t, newTestDecoder(t), insertMsg(testOID, "t:1", "n"), "2 columns")
	})
}

// Rows are carved out of shared arrays: they must never overlap, also
// across slab boundaries.
func TestDecodeRowsDoNotAlias(t *testing.T) {
	d := newTestDecoder(t)
	var changes []replication.Change
	n := 3*valueSlab/len(testColumns) + 3*changeSlab
	for i := range n {
		id := fmt.Sprint(i)
		var msg []byte
		switch i % 3 {
		case 0:
			msg = insertMsg(testOID, "t:"+id, "t:n"+id, "n")
		case 1:
			msg = updateMsg(testOID, 'K', []string{"t:" + id, "n", "n"}, []string{"t:" + id + "x", "t:n" + id, "u"})
		case 2:
			msg = updateMsg(testOID, 0, nil, []string{"t:" + id, "t:n" + id, "t:b"})
		}
		ev := mustEvent(t, d, msg)
		changes = append(changes, ev.Changes...)
		// What a consumer might do with its rows must not show elsewhere.
		ev.Changes = append(ev.Changes, replication.Change{})
		_ = append(ev.Changes[0].After, "appended")
	}
	for i, c := range changes {
		id := fmt.Sprint(i)
		switch i % 3 {
		case 0:
			checkChange(t, c, replication.Insert, nil, row(id, "n"+id, nil))
		case 1:
			checkChange(t, c, replication.Update, row(id, u, u), row(id+"x", "n"+id, u))
		case 2:
			checkChange(t, c, replication.Update, row(id, u, u), row(id, "n"+id, "b"))
		}
	}
}

// A malformed message is an error, never a panic.
func TestDecodeTruncatedMessages(t *testing.T) {
	msgs := [][]byte{
		testRelation(),
		insertMsg(testOID, "t:1", "t:abc", "n"),
		updateMsg(testOID, 'K', []string{"t:1", "n", "n"}, []string{"t:2", "t:a", "u"}),
		updateMsg(testOID, 'O', []string{"t:1", "n", "t:b"}, []string{"t:1", "t:a", "t:b"}),
		updateMsg(testOID, 0, nil, []string{"t:1", "t:a", "u"}),
		deleteMsg(testOID, 'K', "t:7", "n", "n"),
		messageMsg(true, testPrefix, "fence:1"),
		commitMsg(1, 2),
		beginMsg(),
	}
	for _, msg := range msgs {
		for l := 0; l < len(msg); l++ {
			d := newTestDecoder(t)
			if msg[0] == 'B' {
				mustEvent(t, d, commitMsg(1, 2))
			}
			func() {
				defer func() {
					if p := recover(); p != nil {
						t.Fatalf("%q truncated to %d bytes: panic %v", msg[0], l, p)
					}
				}()
				if _, _, err := d.decode(msg[:l]); err == nil {
					t.Errorf("%q truncated to %d bytes: no error", msg[0], l)
				}
			}()
		}
		// Trailing garbage is an error for row changes.
		if strings.IndexByte("IUD", msg[0]) >= 0 {
			mustFail(t, newTestDecoder(t), append(append([]byte{}, msg...), 0))
		}
	}
}

func TestFormatLSN(t *testing.T) {
	for _, lsn := range []uint64{0, 1, 0x16B3748, 0xA_0000_0000, 0xFFFFFFFF_FFFFFFFF, 0x1234_5678_9ABC_DEF0} {
		if got, want := FormatLSN(lsn), pglogrepl.LSN(lsn).String(); got != want {
			t.Errorf("FormatLSN(%#x) = %s, want %s", lsn, got, want)
		}
	}
}

func TestQuoting(t *testing.T) {
	if got := quoteLiteral(quoteIdent(`My "pub" it's`)); got != `'"My ""pub"" it''s"'` {
		t.Error(got)
	}
}

func TestDecodeAllocations(t *testing.T) {
	d := newTestDecoder(t)
	ins := insertMsg(testOID, "t:12345", "t:some name", "t:a body of text")
	upd := updateMsg(testOID, 0, nil, []string{"t:12345", "t:other name", "u"})
	// Per row: one string for the text, one interface box per non-empty
	// value, plus the shared arrays' amortised share.
	if a := testing.AllocsPerRun(1000, func() { d.decode(ins) }); a > 4.2 {
		t.Errorf("insert: %.1f allocations", a)
	}
	if a := testing.AllocsPerRun(1000, func() { d.decode(upd) }); a > 3.2 {
		t.Errorf("update: %.1f allocations", a)
	}
}

func BenchmarkDecodeInsert(b *testing.B) {
	d := newDecoder(testColumns, testOID, testPrefix)
	d.decode(beginMsg())
	d.decode(testRelation())
	msg := insertMsg(testOID, "t:12345", "t:some name", "t:a body of text")
	b.ReportAllocs()
	for b.Loop() {
		if _, _, err := d.decode(msg); err != nil {
			b.Fatal(err)
		}
	}
}
