package alter

import (
	"fmt"
	"strings"
	"unicode/utf8"
)

// tokKind classifies what the lexer saw; comments and whitespace produce no tokens.
type tokKind uint8

const (
	tokWord   tokKind = iota // unquoted keyword, identifier, number or PG $n parameter
	tokIdent                 // quoted identifier: `x` (MySQL) or "x" (Postgres)
	tokString                // string literal: '..', MySQL "..", PG E'..' and $tag$..$tag$
	tokPunct                 // any other single byte
)

type token struct {
	kind     tokKind
	pos, end int    // byte offsets into the lexed text
	src      string // raw text[pos:end]
}

func (t token) is(p string) bool { return t.kind == tokPunct && t.src == p }

// lex splits s into tokens following the server's own lexing rules closely
// enough that everything we consider "outside strings and comments" is exactly
// what the server executes.
//
// strict (used by Parse) rejects every construct whose meaning depends on
// server settings or versions, because an ambiguity there is exactly what an
// injection would exploit: backslash-escaped quotes (NO_BACKSLASH_ESCAPES,
// standard_conforming_strings), MySQL executable comments, nested MySQL
// comments, "--" not followed by a space, and '$' in MySQL unquoted words
// (dollar quoting in MySQL 9). Strict lexing always treats backslashes as
// escapes, which, with \<quote> rejected, gives the same string boundaries as
// not treating them so.
//
// Non-strict lexing (References, IsDDL) never rejects anything: it honours
// escapes as told, reads the body of MySQL /*! */ comments as code and, on an
// unterminated construct, returns the tokens before it with an error.
func lex(s string, d Dialect, strict, escapes bool) ([]token, *Error) {
	var toks []token
	add := func(k tokKind, i, j int) {
		toks = append(toks, token{kind: k, pos: i, end: j, src: s[i:j]})
	}
	inExec := false // inside a MySQL /*! ... */ whose body is lexed as code
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case isSpace(c):
			i++

		case c == '-' && peek(s, i+1) == '-':
			// MySQL only starts a comment when "--" is followed by whitespace,
			// a control character or the end; Postgres always does.
			if d == Postgres || i+2 == len(s) || s[i+2] <= ' ' || s[i+2] == 0x7f {
				i = lineCommentEnd(s, i, d)
				continue
			}
			if strict {
				return toks, errAt(s, i, `"--" directly followed by a non-space is two minus signs to MySQL but a comment to other tools; write "- -" for two minus signs, or "-- " (with a space) for a comment`)
			}
			add(tokPunct, i, i+1)
			i++

		case c == '#' && d == MySQL:
			i = lineCommentEnd(s, i, d)

		case c == '/' && peek(s, i+1) == '*':
			if d == MySQL && (peek(s, i+2) == '!' || (peek(s, i+2) == 'M' && peek(s, i+3) == '!')) {
				if strict {
					return toks, errAt(s, i, `executable comments ("/*!...*/", "/*M!...*/") are not allowed: the server runs their contents as code depending on its version; write the clause itself without the comment wrapper`)
				}
				j := i + 3
				if s[i+2] == 'M' {
					j++
				}
				for j < len(s) && isDigit(s[j]) { // version number
					j++
				}
				inExec = true
				i = j
				continue
			}
			j, e := blockCommentEnd(s, i, d, strict)
			if e != nil {
				return toks, e
			}
			i = j

		case inExec && c == '*' && peek(s, i+1) == '/':
			inExec = false
			i += 2

		case c == '\'' || (c == '"' && d == MySQL):
			j, e := quotedEnd(s, i, c, escapes || strict, strict, "string literal")
			if e != nil {
				return toks, e
			}
			add(tokString, i, j)
			i = j

		case (c == '"' && d == Postgres) || (c == '`' && d == MySQL):
			j, e := quotedEnd(s, i, c, false, false, "quoted identifier")
			if e != nil {
				return toks, e
			}
			add(tokIdent, i, j)
			i = j

		case c == '$' && d == Postgres:
			j, kind, e := dollarEnd(s, i)
			if e != nil {
				return toks, e
			}
			add(kind, i, j)
			i = j

		case d == MySQL && isMyWord(c):
			j := i
			for j < len(s) && isMyWord(s[j]) {
				j++
			}
			if strict && strings.IndexByte(s[i:j], '$') >= 0 {
				return toks, errAt(s, i, `unquoted identifiers containing "$" are not allowed (MySQL 9 treats "$" as a dollar quote in some places); quote the name with backticks`)
			}
			add(tokWord, i, j)
			i = j

		case d == Postgres && isDigit(c):
			// Numbers swallow trailing letters and dots so that "1e'..'" or
			// "1.e'..'" is never mistaken for an E'' string: the server reads
			// those as a number followed by an ordinary string, and treating an
			// ordinary string as one is the safe direction (\' is rejected).
			j := i
			for j < len(s) && (isIdentStart(s[j]) || isDigit(s[j]) || s[j] == '.') {
				j++
			}
			add(tokWord, i, j)
			i = j

		case d == Postgres && isIdentStart(c):
			j := i
			for j < len(s) && (isIdentStart(s[j]) || isDigit(s[j]) || s[j] == '$') {
				j++
			}
			if j == i+1 && (c == 'e' || c == 'E') && peek(s, j) == '\'' {
				// E'...': backslash escapes regardless of server settings.
				k, e := quotedEnd(s, j, '\'', true, false, "string literal")
				if e != nil {
					return toks, e
				}
				add(tokString, i, k)
				i = k
				continue
			}
			add(tokWord, i, j)
			i = j

		default:
			add(tokPunct, i, i+1)
			i++
		}
	}
	return toks, nil
}

// quotedEnd returns the offset just past the quoted token starting at s[i]
// (which is q). Doubling q embeds it; with esc a backslash escapes the next
// byte; with rejectEscQuote a backslash escaping q is an error.
func quotedEnd(s string, i int, q byte, esc, rejectEscQuote bool, what string) (int, *Error) {
	for j := i + 1; j < len(s); j++ {
		switch s[j] {
		case '\\':
			if !esc {
				continue
			}
			if j+1 < len(s) && s[j+1] == q && rejectEscQuote {
				return 0, errAt(s, j, fmt.Sprintf(`backslash-escaped quote \%c: whether it ends the string depends on the server's NO_BACKSLASH_ESCAPES / standard_conforming_strings setting; write the quote doubled (%c%c) instead`, q, q, q))
			}
			j++
		case q:
			if j+1 < len(s) && s[j+1] == q {
				j++
				continue
			}
			return j + 1, nil
		}
	}
	return 0, errAt(s, i, fmt.Sprintf("unterminated %s; close it with a matching %c", what, q))
}

// dollarEnd lexes a Postgres token starting with '$': a $n parameter, a
// $tag$...$tag$ string, or a lone '$'. Like the server, a dollar-quoted body
// ends at the first occurrence of its exact delimiter.
func dollarEnd(s string, i int) (int, tokKind, *Error) {
	j := i + 1
	if j < len(s) && isDigit(s[j]) {
		for j < len(s) && isDigit(s[j]) {
			j++
		}
		return j, tokWord, nil
	}
	if j < len(s) && isIdentStart(s[j]) {
		for j < len(s) && (isIdentStart(s[j]) || isDigit(s[j])) {
			j++
		}
	}
	if j >= len(s) || s[j] != '$' {
		return i + 1, tokPunct, nil
	}
	delim := s[i : j+1]
	k := strings.Index(s[j+1:], delim)
	if k < 0 {
		return 0, 0, errAt(s, i, fmt.Sprintf("unterminated dollar-quoted string; close it with %s", delim))
	}
	return j + 1 + k + len(delim), tokString, nil
}

// lineCommentEnd returns the offset of the byte ending the line comment at
// s[i]: MySQL ends it only at \n, Postgres at \n or \r.
func lineCommentEnd(s string, i int, d Dialect) int {
	for j := i; j < len(s); j++ {
		if s[j] == '\n' || (s[j] == '\r' && d == Postgres) {
			return j
		}
	}
	return len(s)
}

// blockCommentEnd returns the offset just past the /* */ comment at s[i].
// Postgres nests them; MySQL and MariaDB end a plain comment at the first
// "*/". Strict mode rejects a nested "/*" in MySQL, since tools that nest
// (and /*! */ bodies, which tolerate one level) would see a different end.
func blockCommentEnd(s string, i int, d Dialect, strict bool) (int, *Error) {
	depth := 1
	for j := i + 2; j < len(s); j++ {
		switch {
		case s[j] == '*' && peek(s, j+1) == '/':
			j++
			if depth--; depth == 0 {
				return j + 1, nil
			}
		case s[j] == '/' && peek(s, j+1) == '*':
			if d == Postgres {
				depth++
				j++
			} else if strict {
				return 0, errAt(s, j, `nested "/*" inside a comment: MySQL ends the comment at the first "*/" but other tools nest comments; remove the inner "/*"`)
			}
		}
	}
	return 0, errAt(s, i, `unterminated comment; close it with "*/"`)
}

// identValue returns the name a word or quoted identifier token denotes, the
// way the server resolves it. Postgres folds unquoted names to lower case
// (ASCII only, as for UTF-8 databases) and truncates names to 63 bytes.
func identValue(t token, d Dialect) string {
	var v string
	switch t.kind {
	case tokIdent, tokString:
		q := t.src[:1]
		v = strings.ReplaceAll(t.src[1:len(t.src)-1], q+q, q)
	default:
		v = t.src
		if d == Postgres {
			v = asciiLower(v)
		}
	}
	if d == Postgres && len(v) > 63 {
		n := 63
		for n > 0 && !utf8.RuneStart(v[n]) {
			n--
		}
		v = v[:n]
	}
	return v
}

func asciiLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + ('a' - 'A')
		}
	}
	return string(b)
}

func peek(s string, i int) byte {
	if i < len(s) {
		return s[i]
	}
	return 0
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// isIdentStart: letters, '_' and any byte of a multi-byte UTF-8 character.
func isIdentStart(c byte) bool {
	return ('a' <= c && c <= 'z') || ('A' <= c && c <= 'Z') || c == '_' || c >= 0x80
}

// isMyWord: MySQL identifiers and numbers share one character class; names
// may even start with a digit.
func isMyWord(c byte) bool { return isIdentStart(c) || isDigit(c) || c == '$' }

// near quotes a short piece of s starting at i for error messages.
func near(s string, i int) string {
	if i >= len(s) {
		return "end of input"
	}
	j := min(i+24, len(s))
	for j < len(s) && !utf8.RuneStart(s[j]) {
		j++
	}
	if j < len(s) {
		return fmt.Sprintf("near %q...", s[i:j])
	}
	return fmt.Sprintf("near %q", s[i:j])
}

func errAt(s string, pos int, msg string) *Error {
	return &Error{Msg: fmt.Sprintf("%s (at byte %d, %s)", msg, pos, near(s, pos)), Pos: pos}
}
