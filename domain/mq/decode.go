package mq

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"strings"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// This file holds the frame line decoder: one pass over the line, no
// reflection, no intermediate values. It accepts exactly the lines that
// encoding/json (json.Decoder into a Frame, then a check that only whitespace
// follows the object) accepts and yields the same Frame, with one documented
// difference: arrays and objects may nest at most maxNestingDepth deep
// (encoding/json allows 10000). FuzzDecodeEquivalence holds it to that.
//
// The encoding/json behaviours it reproduces:
//   - keys match field names exactly or case-insensitively under Unicode
//     simple folding ("Type", "SEQ" and "ſeq" all match), escapes in keys are
//     decoded first; unknown keys and their values (any JSON) are skipped but
//     must be well-formed;
//   - a key given twice: the last value wins; null leaves a string or integer
//     field as it was, and sets the payload to the raw bytes "null";
//   - strings: \uXXXX escapes with surrogate pairs, a lone surrogate becomes
//     U+FFFD, each byte of invalid UTF-8 becomes U+FFFD;
//   - seq and floor take integer literals only (no fraction, no exponent) in
//     the int64 range; a value of the wrong JSON type is an error;
//   - the payload is the raw bytes of its value, unchanged (escapes, invalid
//     UTF-8 and inner whitespace included);
//   - whitespace (space, tab, CR, LF) around every token; nothing but
//     whitespace after the object.

// maxNestingDepth bounds how deeply arrays and objects nest in one line,
// counting the frame object itself as depth 1. encoding/json allows 10000; a
// frame needs a handful, and the bound keeps the scanner's state in a small
// fixed-size bit set.
const maxNestingDepth = 512

// errTooDeep is wrapped (with ErrBadFrame) when a line nests deeper than
// maxNestingDepth.
var errTooDeep = fmt.Errorf("JSON nested deeper than %d", maxNestingDepth)

// Frame fields a key may select. The string fields come first so that they
// index parsedFrame.strs.
const (
	fieldType = iota
	fieldID
	fieldTopic
	fieldOrigin
	fieldEpoch
	fieldStage
	fieldWant
	fieldAckMode
	numStrFields
)

// The other fields a key may select.
const (
	fieldSeq = numStrFields + iota
	fieldFloor
	fieldPayload
	fieldUnknown
)

// Flags describing a scanned string's raw bytes.
const (
	strEscaped  = 1 << iota // has a backslash escape
	strNonASCII             // has a byte >= 0x80 (possibly invalid UTF-8)
)

// strSpan locates the last value seen for a string field: the raw bytes
// between the quotes.
type strSpan struct {
	start, end int
	flags      uint8
	set        bool
}

// Byte classes inside a JSON string.
const (
	clsPlain = iota
	clsQuote
	clsEscape
	clsControl
	clsNonASCII
)

var strClass = func() (t [256]uint8) {
	for c := 0; c < 0x20; c++ {
		t[c] = clsControl
	}
	t['"'] = clsQuote
	t['\\'] = clsEscape
	for c := 0x80; c < 0x100; c++ {
		t[c] = clsNonASCII
	}
	return t
}()

// parseFrame decodes one JSON object line into a Frame without validating
// the Frame. The Frame owns its memory: its strings share one allocation, its
// payload another, and neither aliases line. Errors wrap ErrBadFrame.
func parseFrame(line []byte) (Frame, error) {
	var (
		strs       [numStrFields]strSpan
		f          Frame
		payStart   = -1
		payEnd     int
		seq, floor int64
		err        error
		d          = line
		i          = skipWS(line, 0)
		field, end int
		flags      uint8
		keyStart   int
		valueStart int
	)
	if i >= len(d) {
		return Frame{}, syntaxErr("empty line", i)
	}
	if d[i] != '{' {
		return Frame{}, syntaxErr("line is not a JSON object", i)
	}
	i = skipWS(d, i+1)
	if i < len(d) && d[i] == '}' {
		i++
	} else {
		for {
			if i >= len(d) || d[i] != '"' {
				return Frame{}, syntaxErr("expected an object key", i)
			}
			keyStart = i + 1
			end, flags, err = scanString(d, keyStart)
			if err != nil {
				return Frame{}, err
			}
			if flags == 0 {
				field = matchField(d[keyStart:end])
			} else {
				field = matchFieldSlow(d[keyStart:end])
			}
			i = skipWS(d, end+1)
			if i >= len(d) || d[i] != ':' {
				return Frame{}, syntaxErr("expected ':' after object key", i)
			}
			i = skipWS(d, i+1)
			if i >= len(d) {
				return Frame{}, syntaxErr("unexpected end of line", i)
			}
			valueStart = i
			switch field {
			case fieldType, fieldID, fieldTopic, fieldOrigin, fieldEpoch, fieldStage, fieldWant, fieldAckMode:
				switch d[i] {
				case '"':
					end, flags, err = scanString(d, i+1)
					if err != nil {
						return Frame{}, err
					}
					strs[field] = strSpan{start: i + 1, end: end, flags: flags, set: true}
					i = end + 1
				case 'n':
					if i, err = scanLiteral(d, i, "null"); err != nil {
						return Frame{}, err
					}
				default:
					return Frame{}, typeErr(field, "a string", valueStart)
				}
			case fieldSeq, fieldFloor:
				var n int64
				var isNum bool
				if i, isNum, n, err = parseIntField(d, i, field); err != nil {
					return Frame{}, err
				}
				if isNum {
					if field == fieldSeq {
						seq = n
					} else {
						floor = n
					}
				}
			case fieldPayload:
				if i, err = skipValue(d, i, 1); err != nil {
					return Frame{}, err
				}
				payStart, payEnd = valueStart, i
			default:
				if i, err = skipValue(d, i, 1); err != nil {
					return Frame{}, err
				}
			}
			i = skipWS(d, i)
			if i >= len(d) {
				return Frame{}, syntaxErr("unexpected end of line", i)
			}
			if d[i] == ',' {
				i = skipWS(d, i+1)
				continue
			}
			if d[i] == '}' {
				i++
				break
			}
			return Frame{}, syntaxErr("expected ',' or '}' after object value", i)
		}
	}
	if i = skipWS(d, i); i != len(d) {
		return Frame{}, syntaxErr("trailing data after JSON object", i)
	}

	f.Seq, f.Floor = seq, floor
	assembleStrings(&f, d, &strs)
	if payStart >= 0 {
		// The one copy of the payload: the caller may reuse line.
		f.Payload = make(json.RawMessage, payEnd-payStart)
		copy(f.Payload, d[payStart:payEnd])
	}
	return f, nil
}

// assembleStrings decodes the string fields into one freshly allocated
// string that the Frame's fields slice. The type is interned when it is msg
// or ack, so an ack costs one allocation (its id) and a msg two (its strings
// and its payload).
func assembleStrings(f *Frame, d []byte, strs *[numStrFields]strSpan) {
	if sp := &strs[fieldType]; sp.set {
		raw := d[sp.start:sp.end]
		if sp.flags != 0 {
			var tmp [16]byte
			raw = appendUnquoted(tmp[:0], raw)
		}
		switch string(raw) {
		case TypeMsg:
			f.Type = TypeMsg
		case TypeAck:
			f.Type = TypeAck
		default:
			f.Type = string(raw)
		}
	}
	total := 0
	for k := fieldID; k < numStrFields; k++ {
		if sp := &strs[k]; sp.set {
			total += sp.end - sp.start
		}
	}
	if total == 0 {
		return
	}
	var b strings.Builder
	b.Grow(total) // escapes only shrink a string; invalid UTF-8 may grow it
	var offs [numStrFields + 1]int
	for k := fieldID; k < numStrFields; k++ {
		offs[k] = b.Len()
		sp := &strs[k]
		if !sp.set {
			continue
		}
		raw := d[sp.start:sp.end]
		if sp.flags == 0 {
			b.Write(raw)
		} else {
			writeUnquoted(&b, raw)
		}
	}
	offs[numStrFields] = b.Len()
	s := b.String()
	f.ID = s[offs[fieldID]:offs[fieldID+1]]
	f.Topic = s[offs[fieldTopic]:offs[fieldTopic+1]]
	f.Origin = PeerID(s[offs[fieldOrigin]:offs[fieldOrigin+1]])
	f.Epoch = s[offs[fieldEpoch]:offs[fieldEpoch+1]]
	f.Stage = s[offs[fieldStage]:offs[fieldStage+1]]
	f.Want = s[offs[fieldWant]:offs[fieldWant+1]]
	f.AckMode = s[offs[fieldAckMode]:offs[fieldAckMode+1]]
}

// writeUnquoted decodes raw string content that needs it into b.
func writeUnquoted(b *strings.Builder, raw []byte) {
	var tmp [256]byte
	b.Write(appendUnquoted(tmp[:0], raw))
}

// parseIntField parses the value of seq or floor at d[i]: an integer literal
// in the int64 range, or null (isNum false: the field keeps its value).
func parseIntField(d []byte, i, field int) (next int, isNum bool, n int64, err error) {
	c := d[i]
	if c == 'n' {
		next, err = scanLiteral(d, i, "null")
		return next, false, 0, err
	}
	if c != '-' && (c < '0' || c > '9') {
		return 0, false, 0, typeErr(field, "an integer", i)
	}
	next, isInt, err := scanNumber(d, i)
	if err != nil {
		return 0, false, 0, err
	}
	if !isInt {
		return 0, false, 0, typeErr(field, "an integer", i)
	}
	n, ok := parseInt64(d[i:next])
	if !ok {
		return 0, false, 0, fmt.Errorf("%w: %s %s out of int64 range", ErrBadFrame, fieldName(field), truncate(string(d[i:next]), 32))
	}
	return next, true, n, nil
}

// parseInt64 parses -?[0-9]+ (already validated as a JSON integer).
func parseInt64(b []byte) (int64, bool) {
	neg := b[0] == '-'
	if neg {
		b = b[1:]
	}
	var n uint64
	for _, c := range b {
		if n > (1<<63)/10 {
			return 0, false // n*10 > 1<<63
		}
		n = n*10 + uint64(c-'0') // at most 2^63+9: no wrap
		if n > 1<<63 {
			return 0, false
		}
	}
	if neg {
		return -int64(n), true // n == 1<<63 gives math.MinInt64
	}
	if n > 1<<63-1 {
		return 0, false
	}
	return int64(n), true
}

// skipWS returns the index of the first non-whitespace byte at or after i.
func skipWS(d []byte, i int) int {
	for i < len(d) {
		switch d[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}

// scanString scans a string whose content starts at d[i] (after the opening
// quote) and returns the index of the closing quote and what it contains. It
// checks what the JSON grammar requires: no raw control characters and valid
// escapes. It does not check UTF-8 (invalid bytes are replaced on decoding).
func scanString(d []byte, i int) (end int, flags uint8, err error) {
	for i < len(d) {
		if i+8 <= len(d) {
			// Eight bytes at a time while they are plain.
			m := stringSpecials(binary.LittleEndian.Uint64(d[i:]))
			if m == 0 {
				i += 8
				continue
			}
			i += bits.TrailingZeros64(m) >> 3
		}
		cls := strClass[d[i]]
		if cls == clsPlain {
			i++
			continue
		}
		switch cls {
		case clsQuote:
			return i, flags, nil
		case clsNonASCII:
			flags |= strNonASCII
			i++
		case clsEscape:
			flags |= strEscaped
			if i+1 >= len(d) {
				return 0, 0, syntaxErr("unexpected end of line in string", len(d))
			}
			switch d[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(d) {
					return 0, 0, syntaxErr("unexpected end of line in string", len(d))
				}
				for k := i + 2; k < i+6; k++ {
					if unhex(d[k]) < 0 {
						return 0, 0, syntaxErr("invalid \\u escape in string", k)
					}
				}
				i += 6
			default:
				return 0, 0, syntaxErr("invalid escape in string", i+1)
			}
		default:
			return 0, 0, syntaxErr("control character in string", i)
		}
	}
	return 0, 0, syntaxErr("unexpected end of line in string", i)
}

// SWAR masks: one bit per byte of a little-endian word.
const (
	lsbs = 0x0101010101010101
	msbs = 0x8080808080808080
)

// stringSpecials flags (high bit of each byte) the bytes of x that are not
// plain in a JSON string: a control character, '"', '\\' or a byte >= 0x80.
// The lowest flagged byte is exact (borrows only run upwards), which is all
// the callers use.
func stringSpecials(x uint64) uint64 {
	ctl := (x - 0x20*lsbs) &^ x
	return (x|ctl)&msbs | hasByte(x, '"') | hasByte(x, '\\')
}

// hasByte flags (high bit of each byte) the bytes of x equal to c; a byte
// above one flagged may be flagged too (borrows run upwards), so the
// lowest flagged byte is exact.
func hasByte(x uint64, c byte) uint64 {
	v := x ^ (uint64(c) * lsbs)
	return (v - lsbs) &^ v & msbs
}

// word8 returns the eight bytes of s from i (i+8 <= len(s)), the first
// lowest, as one word.
func word8(s string, i int) uint64 {
	return uint64(s[i]) | uint64(s[i+1])<<8 | uint64(s[i+2])<<16 | uint64(s[i+3])<<24 |
		uint64(s[i+4])<<32 | uint64(s[i+5])<<40 | uint64(s[i+6])<<48 | uint64(s[i+7])<<56
}

// scanNumber scans a JSON number at d[i] and reports whether it is an
// integer literal (no fraction, no exponent). The caller checks what follows.
func scanNumber(d []byte, i int) (end int, isInt bool, err error) {
	start := i
	if i < len(d) && d[i] == '-' {
		i++
	}
	switch {
	case i < len(d) && d[i] == '0':
		i++
	case i < len(d) && d[i] >= '1' && d[i] <= '9':
		i++
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	default:
		return 0, false, syntaxErr("invalid number", start)
	}
	isInt = true
	if i < len(d) && d[i] == '.' {
		isInt = false
		i++
		if i >= len(d) || d[i] < '0' || d[i] > '9' {
			return 0, false, syntaxErr("invalid number", start)
		}
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	}
	if i < len(d) && (d[i] == 'e' || d[i] == 'E') {
		isInt = false
		i++
		if i < len(d) && (d[i] == '+' || d[i] == '-') {
			i++
		}
		if i >= len(d) || d[i] < '0' || d[i] > '9' {
			return 0, false, syntaxErr("invalid number", start)
		}
		for i < len(d) && d[i] >= '0' && d[i] <= '9' {
			i++
		}
	}
	return i, isInt, nil
}

// scanLiteral checks that lit (true, false or null) is at d[i].
func scanLiteral(d []byte, i int, lit string) (int, error) {
	if len(d)-i < len(lit) || string(d[i:i+len(lit)]) != lit {
		return 0, syntaxErr("invalid literal", i)
	}
	return i + len(lit), nil
}

// CheckPayload reports whether p is a payload a frame can carry: one JSON
// value, with whitespace around it, that encoding/json accepts (json.Valid)
// and that nests at most maxNestingDepth-1 deep, so that the frame holding
// it decodes (the frame object is the first level). The error, wrapping
// ErrBadFrame, says what is wrong and where.
func CheckPayload(p []byte) error {
	i := skipWS(p, 0)
	if i >= len(p) {
		return fmt.Errorf("%w: payload is not valid JSON: it is empty", ErrBadFrame)
	}
	end, err := skipValue(p, i, 1)
	if err == nil && skipWS(p, end) != len(p) {
		err = syntaxErr("trailing data after the JSON value", skipWS(p, end))
	}
	if err != nil {
		return payloadErr(err)
	}
	return nil
}

// payloadErr words err, from skipValue, for a payload.
func payloadErr(err error) error {
	if se := (*syntaxError)(nil); errors.As(err, &se) {
		return fmt.Errorf("%w: payload is not valid JSON: %s", ErrBadFrame, se.detail())
	}
	if errors.Is(err, errTooDeep) {
		return fmt.Errorf("%w: payload nests deeper than %d levels", ErrBadFrame, maxNestingDepth-1)
	}
	return err
}

// skipValue validates the JSON value at d[i] (no leading whitespace), nested
// inside depth open containers, and returns the index just after it.
func skipValue(d []byte, i, depth int) (int, error) {
	var (
		isObj [maxNestingDepth / 64]uint64 // bit n: container n is an object
		n     int                          // containers open inside this value
		err   error
	)
	for {
		if i >= len(d) {
			return 0, syntaxErr("unexpected end of line", i)
		}
		switch c := d[i]; c {
		case '{', '[':
			if depth+n >= maxNestingDepth {
				return 0, fmt.Errorf("%w: %w at byte %d", ErrBadFrame, errTooDeep, i)
			}
			if c == '{' {
				isObj[n>>6] |= 1 << (n & 63)
			} else {
				isObj[n>>6] &^= 1 << (n & 63)
			}
			n++
			i = skipWS(d, i+1)
			if i < len(d) && d[i] == c+2 { // '{'+2 is '}', '['+2 is ']'
				n--
				i++
				break // an empty container: the value is complete
			}
			if c == '{' {
				if i, err = scanKey(d, i); err != nil {
					return 0, err
				}
			}
			continue // the first member's value
		case '"':
			end, _, err := scanString(d, i+1)
			if err != nil {
				return 0, err
			}
			i = end + 1
		case 't':
			if i, err = scanLiteral(d, i, "true"); err != nil {
				return 0, err
			}
		case 'f':
			if i, err = scanLiteral(d, i, "false"); err != nil {
				return 0, err
			}
		case 'n':
			if i, err = scanLiteral(d, i, "null"); err != nil {
				return 0, err
			}
		case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
			if i, _, err = scanNumber(d, i); err != nil {
				return 0, err
			}
		default:
			return 0, syntaxErr("invalid character looking for a value", i)
		}
		// A value is complete: close containers until one continues.
		for {
			if n == 0 {
				return i, nil
			}
			i = skipWS(d, i)
			if i >= len(d) {
				return 0, syntaxErr("unexpected end of line", i)
			}
			obj := isObj[(n-1)>>6]&(1<<((n-1)&63)) != 0
			c := d[i]
			if c == ',' {
				i = skipWS(d, i+1)
				if obj {
					if i, err = scanKey(d, i); err != nil {
						return 0, err
					}
				}
				break
			}
			if (obj && c == '}') || (!obj && c == ']') {
				n--
				i++
				continue
			}
			return 0, syntaxErr("expected ',' or the end of an array or object", i)
		}
	}
}

// scanKey scans `"key" :` and the whitespace after it, starting at d[i].
func scanKey(d []byte, i int) (int, error) {
	if i >= len(d) || d[i] != '"' {
		return 0, syntaxErr("expected an object key", i)
	}
	end, _, err := scanString(d, i+1)
	if err != nil {
		return 0, err
	}
	i = skipWS(d, end+1)
	if i >= len(d) || d[i] != ':' {
		return 0, syntaxErr("expected ':' after object key", i)
	}
	return skipWS(d, i+1), nil
}

// matchField maps a key of plain ASCII bytes (no escapes) to a field,
// case-insensitively.
func matchField(k []byte) int {
	switch len(k) {
	case 2:
		if eqFold(k, "id") {
			return fieldID
		}
	case 3:
		if eqFold(k, "seq") {
			return fieldSeq
		}
	case 4:
		switch k[0] | 0x20 {
		case 't':
			if eqFold(k, "type") {
				return fieldType
			}
		case 'w':
			if eqFold(k, "want") {
				return fieldWant
			}
		}
	case 5:
		switch k[0] | 0x20 {
		case 't':
			if eqFold(k, "topic") {
				return fieldTopic
			}
		case 'e':
			if eqFold(k, "epoch") {
				return fieldEpoch
			}
		case 'f':
			if eqFold(k, "floor") {
				return fieldFloor
			}
		case 's':
			if eqFold(k, "stage") {
				return fieldStage
			}
		}
	case 6:
		if eqFold(k, "origin") {
			return fieldOrigin
		}
	case 7:
		if eqFold(k, "payload") {
			return fieldPayload
		}
	case 8:
		if eqFold(k, "ack_mode") {
			return fieldAckMode
		}
	}
	return fieldUnknown
}

// eqFold reports whether k equals lower (lowercase ASCII letters and other
// ASCII bytes) ignoring the case of its letters. For a letter target,
// c|0x20 == lower[i] holds only for the letter and its uppercase form; any
// other byte must match exactly.
func eqFold(k []byte, lower string) bool {
	for i := 0; i < len(k); i++ {
		if c := lower[i]; c >= 'a' && c <= 'z' {
			if k[i]|0x20 != c {
				return false
			}
		} else if k[i] != c {
			return false
		}
	}
	return true
}

// matchFieldSlow maps a key with escapes or non-ASCII bytes to a field the way
// encoding/json does: decode it, fold it under Unicode simple folding (so that
// "ſeq" is "seq"), compare.
func matchFieldSlow(raw []byte) int {
	var tmp, folded [32]byte
	key := appendUnquoted(tmp[:0], raw)
	out := folded[:0]
	for i := 0; i < len(key); {
		if c := key[i]; c < utf8.RuneSelf {
			out = append(out, c)
			i++
			continue
		}
		r, n := utf8.DecodeRune(key[i:])
		out = utf8.AppendRune(out, foldRune(r))
		i += n
	}
	// Folded ASCII letters are uppercase; non-ASCII bytes never match.
	return matchField(out)
}

// foldRune returns the smallest rune of r's simple fold orbit (as
// encoding/json does).
func foldRune(r rune) rune {
	for {
		r2 := unicode.SimpleFold(r)
		if r2 <= r {
			return r2
		}
		r = r2
	}
}

// appendUnquoted appends the decoded content of a scanned JSON string (the
// bytes between its quotes) to dst, exactly as encoding/json decodes it:
// escapes resolved, a \u surrogate pair combined, a lone surrogate and each
// byte of invalid UTF-8 replaced with U+FFFD.
func appendUnquoted(dst, s []byte) []byte {
	for r := 0; r < len(s); {
		c := s[r]
		switch {
		case c == '\\':
			switch s[r+1] {
			case 'b':
				dst = append(dst, '\b')
			case 'f':
				dst = append(dst, '\f')
			case 'n':
				dst = append(dst, '\n')
			case 'r':
				dst = append(dst, '\r')
			case 't':
				dst = append(dst, '\t')
			case 'u':
				rr := getu4(s[r:])
				r += 6
				if utf16.IsSurrogate(rr) {
					rr1 := getu4(s[r:])
					if dec := utf16.DecodeRune(rr, rr1); dec != unicode.ReplacementChar {
						dst = utf8.AppendRune(dst, dec)
						r += 6
						continue
					}
					rr = unicode.ReplacementChar
				}
				dst = utf8.AppendRune(dst, rr)
				continue
			default: // '"', '\\', '/'
				dst = append(dst, s[r+1])
			}
			r += 2
		case c < utf8.RuneSelf:
			dst = append(dst, c)
			r++
		default:
			rr, size := utf8.DecodeRune(s[r:])
			dst = utf8.AppendRune(dst, rr) // RuneError for an invalid byte
			r += size
		}
	}
	return dst
}

// getu4 decodes the \uXXXX escape at the start of s, or returns -1.
func getu4(s []byte) rune {
	if len(s) < 6 || s[0] != '\\' || s[1] != 'u' {
		return -1
	}
	var r rune
	for _, c := range s[2:6] {
		h := unhex(c)
		if h < 0 {
			return -1
		}
		r = r*16 + h
	}
	return r
}

func unhex(c byte) rune {
	switch {
	case '0' <= c && c <= '9':
		return rune(c - '0')
	case 'a' <= c && c <= 'f':
		return rune(c - 'a' + 10)
	case 'A' <= c && c <= 'F':
		return rune(c - 'A' + 10)
	}
	return -1
}

func syntaxErr(what string, at int) error {
	return &syntaxError{what: what, at: at}
}

// syntaxError is a JSON syntax error in a line: what is wrong, and the
// byte it was found at. It wraps ErrBadFrame.
type syntaxError struct {
	what string
	at   int
}

func (e *syntaxError) Error() string {
	return fmt.Sprintf("%v: %s", ErrBadFrame, e.detail())
}

func (e *syntaxError) Unwrap() error { return ErrBadFrame }

func (e *syntaxError) detail() string { return fmt.Sprintf("%s at byte %d", e.what, e.at) }

func typeErr(field int, want string, at int) error {
	return fmt.Errorf("%w: %s must be %s (byte %d)", ErrBadFrame, fieldName(field), want, at)
}

func fieldName(field int) string {
	switch field {
	case fieldType:
		return "type"
	case fieldID:
		return "id"
	case fieldTopic:
		return "topic"
	case fieldOrigin:
		return "origin"
	case fieldEpoch:
		return "epoch"
	case fieldStage:
		return "stage"
	case fieldWant:
		return "want"
	case fieldSeq:
		return "seq"
	case fieldFloor:
		return "floor"
	case fieldPayload:
		return "payload"
	}
	return "field"
}
