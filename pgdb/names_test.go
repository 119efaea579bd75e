package pgdb

import (
	"math"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestDerivedNamesFit(t *testing.T) {
	for _, name := range []string{"t", strings.Repeat("a", 58), strings.Repeat("a", 63), strings.Repeat("é", 31) + "x"} {
		for _, suffix := range []string{"_new", "_old"} {
			got := derived(name, suffix)
			if len(got) > 63 || !utf8.ValidString(got) || !strings.HasSuffix(got, suffix) {
				t.Errorf("derived(%q, %q) = %q (%d bytes)", name, suffix, got, len(got))
			}
		}
	}
	if derived(strings.Repeat("a", 63), "_new") == derived(strings.Repeat("a", 62)+"b", "_new") {
		t.Error("shortened names of different tables collide")
	}
	if got := derived("orders", "_new"); got != "_orders_new" {
		t.Errorf("short names are kept readable: got %q", got)
	}
}

func TestIndexNames(t *testing.T) {
	long := strings.Repeat("ü", 31)
	for _, orig := range []string{"t_pkey", long, strings.Repeat("i", 63)} {
		n, o := indexName("n", orig), indexName("o", orig)
		if n == o || len(n) > 63 || len(o) > 63 || !utf8.ValidString(n) || !utf8.ValidString(o) {
			t.Errorf("indexName(%q) = %q, %q", orig, n, o)
		}
	}
	if indexName("n", strings.Repeat("i", 62)+"a") == indexName("n", strings.Repeat("i", 62)+"b") {
		t.Error("index names of different originals collide")
	}
}

func TestNamesPerTable(t *testing.T) {
	a, b := newNames("public", "t"), newNames("other", "t")
	if a.slot == b.slot || a.publication == b.publication {
		t.Error("the same table name in two schemas must get different slots and publications")
	}
	for _, n := range []string{a.slot, a.publication} {
		if len(n) > 63 || strings.ToLower(n) != n {
			t.Errorf("slot/publication name %q must be lower case and fit 63 bytes", n)
		}
	}
}

func TestUnquoteSimple(t *testing.T) {
	for in, want := range map[string]string{`t_id_seq`: "t_id_seq", `"Mixed"`: "Mixed", `"a""b"`: `a"b`} {
		if got := unquoteSimple(in); got != want {
			t.Errorf("unquoteSimple(%s) = %q, want %q", in, got, want)
		}
	}
}

func TestNotValid(t *testing.T) {
	if got := notValid("FOREIGN KEY (a) REFERENCES public.p(id) NOT VALID"); strings.Count(got, "NOT VALID") != 1 {
		t.Errorf("notValid doubled: %q", got)
	}
	if got := notValid("FOREIGN KEY (a) REFERENCES public.p(id)"); !strings.HasSuffix(got, " NOT VALID") {
		t.Errorf("notValid: %q", got)
	}
}

func TestSweepBuckets(t *testing.T) {
	if got := sweepShift(1, 3000, 3000, 400); got != 9 {
		t.Errorf("sweepShift(1, 3000, 3000 rows, 400) = %d, want 9 (buckets of 512 keys)", got)
	}
	if got := sweepShift(math.MinInt64, math.MaxInt64, 1e6, 10000); got != 62 {
		t.Errorf("sweepShift over the whole int8 range = %d, want 62", got)
	}
	if got := sweepShift(5, 5, 1, 10000); got != 0 {
		t.Errorf("sweepShift of one key = %d, want 0", got)
	}
	for _, c := range []struct {
		b          int64
		shift      uint
		after, end string
	}{
		{0, 9, "-1", "511"},
		{1, 9, "511", "1023"},
		{-1, 9, "-513", "-1"},
		{math.MinInt64 >> 9, 9, "", strconv.FormatInt(math.MinInt64+511, 10)},
		{math.MaxInt64 >> 9, 9, strconv.FormatInt(math.MaxInt64-512, 10), strconv.FormatInt(math.MaxInt64, 10)},
	} {
		ch := bucketChunk(c.b, c.shift)
		after := ""
		if ch.After != nil {
			after = ch.After[0].(string)
		}
		if after != c.after || ch.End[0].(string) != c.end {
			t.Errorf("bucketChunk(%d, %d) = (%s, %s], want (%s, %s]", c.b, c.shift, after, ch.End[0], c.after, c.end)
		}
	}
}
