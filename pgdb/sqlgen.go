package pgdb

import (
	"fmt"
	"strings"

	"github.com/osc-dev/osc/alter"
)

// colPair maps a copied source column to its shadow column; expr computes
// the shadow's value from a row of the source (the column itself, or the
// ALTER's USING expression).
type colPair struct {
	src, dst *column
	expr     string
}

// statements is the SQL of the copy, the applier and verification, built
// once with the plan. Key values travel as text, cast to the key's type.
type statements struct {
	src, shadow string   // qualified, quoted names
	alias       string   // the source table's bare name, for USING expressions
	targets     string   // shadow column list of the copied columns
	exprs       string   // their values computed from a source row
	keyCols     []string // quoted source key columns
	keyNames    []string // the same, unquoted
	keyTypes    []string
	shadowKey   string // "(k1, k2)" in the shadow
	conflict    string // ON CONFLICT clause on the shadow's key
	repl        []*column
	pairs       []colPair
	replPos     map[string]int // replicated source column → position in the stream's rows
	// cached are update statements by the set of columns present.
	cached map[string]string
	// The applier's other statements, built once.
	insertRow, deleteRow, moveOnto, copyOne string
	manyUpdate                              string // updateMany's, built on first use
}

func newStatements(e *Engine) *statements {
	s := &statements{
		src: e.qt(e.src.name), shadow: e.qt(e.names.shadow), alias: q(e.src.name),
		repl: e.src.replicated(), pairs: e.mapping, replPos: map[string]int{}, cached: map[string]string{},
	}
	var targets, exprs, skey []string
	for _, p := range e.mapping {
		targets = append(targets, q(p.dst.name))
		exprs = append(exprs, p.expr)
	}
	for _, k := range e.key {
		s.keyCols = append(s.keyCols, q(k.name))
		s.keyNames = append(s.keyNames, k.name)
		s.keyTypes = append(s.keyTypes, k.typ)
		skey = append(skey, q(e.pairFor(k).dst.name))
	}
	for i, c := range s.repl {
		s.replPos[c.name] = i
	}
	s.targets = strings.Join(targets, ", ")
	s.exprs = strings.Join(exprs, ", ")
	s.shadowKey = "(" + strings.Join(skey, ", ") + ")"
	s.conflict = " ON CONFLICT " + s.shadowKey + " DO NOTHING"
	s.insertRow, s.deleteRow, s.moveOnto, s.copyOne = s.insert(), s.delete(), s.deleteMovedOnto(), s.copyKey()
	return s
}

// keyParams returns "($n::t1, $n+1::t2)" starting at parameter n.
func (s *statements) keyParams(n int) string {
	ps := make([]string, len(s.keyTypes))
	for i, t := range s.keyTypes {
		ps[i] = fmt.Sprintf("$%d::text::%s", n+i, t)
	}
	return "(" + strings.Join(ps, ", ") + ")"
}

func (s *statements) keyList() string { return "(" + strings.Join(s.keyCols, ", ") + ")" }

func (s *statements) keyOrder(desc bool) string {
	cs := make([]string, len(s.keyCols))
	for i, c := range s.keyCols {
		cs[i] = c
		if desc {
			cs[i] += " DESC"
		}
	}
	return strings.Join(cs, ", ")
}

// keyText selects the key columns as text, under names of their own: an
// output column named like a key column would make ORDER BY sort the text.
func (s *statements) keyText() string {
	cs := make([]string, len(s.keyCols))
	for i, c := range s.keyCols {
		cs[i] = fmt.Sprintf("%s::text AS osc_key_%d", c, i)
	}
	return strings.Join(cs, ", ")
}

// rangeWhere is the predicate after < key <= end on the given key columns
// (the source's, or the shadow's); parameters start at $1.
func (s *statements) rangeWhere(keys string, hasAfter, hasEnd bool) string {
	var conds []string
	n := 1
	if hasAfter {
		conds = append(conds, keys+" > "+s.keyParams(n))
		n += len(s.keyCols)
	}
	if hasEnd {
		conds = append(conds, keys+" <= "+s.keyParams(n))
	}
	if len(conds) == 0 {
		return "true"
	}
	return strings.Join(conds, " AND ")
}

// copyPositions copies the rows at positions $1 < ctid <= $2 (a TID
// range scan) into the shadow as the transaction's snapshot sees them: the
// copy runs in the slot's exported snapshot while the applier is held, so
// the shadow has no row of the range yet and no change to the table since
// the snapshot may be applied before it. No row locks (FOR SHARE would
// write every row's xmax, dirtying every page of the table) and no ON
// CONFLICT.
func (s *statements) copyPositions() string {
	return "INSERT INTO " + s.shadow + " (" + s.targets + ") OVERRIDING SYSTEM VALUE SELECT " + s.exprs +
		" FROM ONLY " + s.src + " WHERE ctid > $1::text::tid AND ctid <= $2::text::tid"
}

// chunkEnd is the position of the row $3 rows past position $1, among
// the rows before position $2 (a TID range scan; see source.Boundary).
func (s *statements) chunkEnd() string {
	return "SELECT ctid::text FROM ONLY " + s.src + " WHERE ctid > $1::text::tid AND ctid < $2::text::tid LIMIT 1 OFFSET $3"
}

// copyRange copies a key range into the shadow: see repairRange.
func (s *statements) copyRange(hasAfter, hasEnd bool) string {
	return "INSERT INTO " + s.shadow + " (" + s.targets + ") OVERRIDING SYSTEM VALUE SELECT " + s.exprs +
		" FROM ONLY " + s.src + " WHERE " + s.rangeWhere(s.keyList(), hasAfter, hasEnd)
}

// repairRange copies a key range again while the applier runs (a repair
// after verification), in READ COMMITTED. FOR SHARE waits for in-flight
// writers of those rows and reads the version they committed, so a row is
// never copied older than a change the stream may already have delivered;
// a row the applier wrote meanwhile is left to it (ON CONFLICT): every
// later change of it follows in the stream.
func (s *statements) repairRange(hasAfter, hasEnd bool) string {
	return s.copyRange(hasAfter, hasEnd) + " FOR SHARE" + s.conflict
}

// rowSource is a one-row subquery holding the stream's values of the
// present columns under the source's names, so that USING expressions
// evaluate as they do in the copy. Parameters start at $1.
func (s *statements) rowSource(present []bool) string {
	var cols []string
	n := 1
	for i, c := range s.repl {
		if present[i] {
			cols = append(cols, fmt.Sprintf("$%d AS %s", n, q(c.name)))
			n++
		}
	}
	return "(SELECT " + strings.Join(cols, ", ") + ") AS " + s.alias
}

// insert writes a full row image. After the snapshot copy no row is
// there yet; a row already there was copied by a repair from the table's
// latest rows, and is newer.
func (s *statements) insert() string {
	all := make([]bool, len(s.repl))
	for i := range all {
		all[i] = true
	}
	return "INSERT INTO " + s.shadow + " (" + s.targets + ") OVERRIDING SYSTEM VALUE SELECT " + s.exprs +
		" FROM " + s.rowSource(all) + s.conflict
}

// update sets the shadow columns whose source column is present (an
// unchanged TOASTed value is not sent, and stays as it is), including the
// key when it changes; the old key follows the present values' parameters.
// It returns "" when nothing is to be set.
func (s *statements) update(present []bool, withKey bool, nPresent int) string {
	sig := make([]byte, len(present)+1)
	for i, p := range present {
		sig[i] = '0'
		if p {
			sig[i] = '1'
		}
	}
	sig[len(present)] = '0'
	if withKey {
		sig[len(present)] = '1'
	}
	if st, ok := s.cached[string(sig)]; ok {
		return st
	}
	var targets, exprs []string
	for _, p := range s.pairs {
		i, ok := s.replPos[p.src.name]
		if !ok || !present[i] || (!withKey && s.isKey(p.src.name)) {
			continue
		}
		targets = append(targets, q(p.dst.name))
		exprs = append(exprs, p.expr)
	}
	st := ""
	if len(targets) > 0 {
		st = "UPDATE " + s.shadow + " SET (" + strings.Join(targets, ", ") + ") = (SELECT " + strings.Join(exprs, ", ") +
			" FROM " + s.rowSource(present) + ") WHERE " + s.shadowKey + " = " + s.keyParams(nPresent+1)
	}
	s.cached[string(sig)] = st
	return st
}

// updateMany applies updates of distinct keys whose images carry every
// column, in one statement: a text[] parameter per replicated column,
// unnested into rows, each row computed into the shadow's columns as
// update computes one (the scalar subquery's FROM shadows the target's
// column names, as in update).
func (s *statements) updateMany() string {
	if s.manyUpdate != "" {
		return s.manyUpdate
	}
	var targets, exprs, params, vcols, casts []string
	for _, p := range s.pairs {
		if _, ok := s.replPos[p.src.name]; ok && !s.isKey(p.src.name) {
			targets = append(targets, q(p.dst.name))
			exprs = append(exprs, p.expr)
		}
	}
	for i, c := range s.repl {
		params = append(params, fmt.Sprintf("$%d::text[]", i+1))
		vcols = append(vcols, fmt.Sprintf("osc_v_%d", i))
		casts = append(casts, fmt.Sprintf("osc_v.osc_v_%d::%s AS %s", i, c.typ, q(c.name)))
	}
	keys := make([]string, len(s.keyNames))
	for i, k := range s.keyNames {
		keys[i] = fmt.Sprintf("osc_v.osc_v_%d::%s", s.replPos[k], s.keyTypes[i])
	}
	s.manyUpdate = "UPDATE " + s.shadow + " SET (" + strings.Join(targets, ", ") + ") = (SELECT " + strings.Join(exprs, ", ") +
		" FROM (SELECT " + strings.Join(casts, ", ") + ") AS " + s.alias + ") FROM unnest(" + strings.Join(params, ", ") +
		") AS osc_v(" + strings.Join(vcols, ", ") + ") WHERE " + s.shadowKey + " = (" + strings.Join(keys, ", ") + ")"
	return s.manyUpdate
}

func (s *statements) isKey(name string) bool {
	for _, k := range s.keyNames {
		if k == name {
			return true
		}
	}
	return false
}

func (s *statements) delete() string {
	return "DELETE FROM " + s.shadow + " WHERE " + s.shadowKey + " = " + s.keyParams(1)
}

// deleteMovedOnto removes a row at the new key of a key change ($1..) when
// the row at the old key (after it) is in the shadow: the update then moves
// that row onto the new key.
func (s *statements) deleteMovedOnto() string {
	n := len(s.keyCols)
	return "DELETE FROM " + s.shadow + " WHERE " + s.shadowKey + " = " + s.keyParams(1) +
		" AND EXISTS (SELECT FROM " + s.shadow + " WHERE " + s.shadowKey + " = " + s.keyParams(n+1) + ")"
}

// copyKey copies one row from the source by key ($1..), for a key change
// whose old row was not in the shadow and whose new image is incomplete
// (only after a repair; see writer.add). The row is normally in the shadow
// already (the update before it moved it there): the shadow is checked
// first, so that the table's row is not locked for nothing.
func (s *statements) copyKey() string {
	return "INSERT INTO " + s.shadow + " (" + s.targets + ") OVERRIDING SYSTEM VALUE SELECT " + s.exprs +
		" FROM ONLY " + s.src + " WHERE " + s.keyList() + " = " + s.keyParams(1) +
		" AND NOT EXISTS (SELECT FROM " + s.shadow + " WHERE " + s.shadowKey + " = " + s.keyParams(1) + ") FOR SHARE" + s.conflict
}

// valueHash hashes a value of a built-in type whose hash function tells
// apart what its equality does (text types under the "C" collation), as
// a format of the value and a seed. Hashing values, rather than the row's
// text, saves rendering them: for 1M pgbench rows a side takes 0.35 s
// instead of 1.0 s. Other types (numeric's scale, float's -0, intervals,
// dates' infinity, domains, arrays...) are compared by their text.
var valueHash = map[uint32]string{
	16:   "hashint4extended((%s)::int, %d)",                      // bool
	18:   "hashcharextended(%s, %d)",                             // "char"
	20:   "hashint8extended(%s, %d)",                             // bigint
	21:   "hashint2extended(%s, %d)",                             // smallint
	23:   "hashint4extended(%s, %d)",                             // integer
	25:   `hashtextextended((%s) COLLATE "C", %d)`,               // text
	26:   "hashoidextended(%s, %d)",                              // oid
	1042: `hashbpcharextended((%s) COLLATE "C", %d)`,             // character
	1043: `hashtextextended((%s) COLLATE "C", %d)`,               // character varying
	1083: "time_hash_extended(%s, %d)",                           // time
	1114: "timestamp_hash_extended(%s, %d)",                      // timestamp
	1184: "timestamp_hash_extended((%s) AT TIME ZONE 'UTC', %d)", // timestamptz
	2950: "uuid_hash_extended(%s, %d)",                           // uuid
}

// verifyExprs render each side's 64-bit row hash: of the source's values
// computed as the copy does and cast to the shadow's types, and of the
// shadow's values. Each column of a valueHash type is hashed with its
// position as seed (a NULL hashes to the seed), the other columns together
// as the text of a ROW, and the hashes are XORed.
func (s *statements) verifyExprs() (src, dst string) {
	var a, b, ta, tb []string
	for i, p := range s.pairs {
		x, y := p.expr, q(p.dst.name)
		if p.src.typ != p.dst.typ || x != q(p.src.name) {
			x = "(" + x + ")::" + p.dst.typ
		}
		f, ok := valueHash[p.dst.typeOID]
		if !ok {
			ta, tb = append(ta, x), append(tb, y)
			continue
		}
		hash := func(v string) string { return fmt.Sprintf("coalesce("+f+", %d)", v, i+1, i+1) }
		a, b = append(a, hash(x)), append(b, hash(y))
	}
	if len(ta) > 0 {
		a = append(a, "hashtextextended(ROW("+strings.Join(ta, ", ")+")::text, 0)")
		b = append(b, "hashtextextended(ROW("+strings.Join(tb, ", ")+")::text, 0)")
	}
	return strings.Join(a, " # "), strings.Join(b, " # ")
}

// hashQuery counts a side's rows in a key range and sums their hashes.
func hashQuery(table, hash, where string) string {
	return "SELECT count(*), coalesce(sum(" + hash + "), 0)::text FROM ONLY " + table + " WHERE " + where
}

// usingExpr returns the expression computing the shadow's value of a
// column from the source row.
func usingExpr(c *alter.Clauses, src string) string {
	if x, ok := c.Using[src]; ok {
		return "(" + x + ")"
	}
	return q(src)
}
