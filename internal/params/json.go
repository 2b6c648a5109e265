package params

import (
	"bytes"
	"strings"
	"unicode/utf16"
	"unicode/utf8"
)

// Why a scanner of our own rather than encoding/json: the body must be read
// as JSON.parse reads it, and encoding/json refuses nesting deeper than
// 10,000 levels, which JSON.parse accepts (and which the schema allows
// inside options), so a plain decode would answer such a valid body with
// 'must have required property rid'. It also costs no allocation on a
// typical body. FuzzParse checks it against an encoding/json reference on
// every body that reference can read, and the conformance suite against
// Rocket.Chat's own parser.
//
// parseJSON validates a JSON body against the schema in one pass over the
// text, without building a document: it checks the syntax of the whole body
// (invalid JSON is {} to Rocket.Chat), notes where the values of rid, token
// and options are, and then applies AJV's checks to those values. Strings
// without escapes are substrings of body, so a typical valid body costs no
// allocation but the strings it returns (copied out of body, which the
// caller may reuse); escapes, numbers coerced to strings and tags allocate
// too.
func parseJSON(body []byte) (Params, *Error) {
	body = wellFormedUTF8(body)
	sc := scanner{s: body}
	sc.ws()
	if sc.peek() != '{' {
		// Rocket.Chat's router hands an array to the validator as it is and
		// spreads any other value into an object ({ ...parsed }): null,
		// numbers and booleans become {}, a string its characters keyed
		// "0", "1", …; none of them has 'rid'. Not JSON at all is {} too.
		if sc.peek() == '[' && sc.value() && sc.end() {
			return Params{}, errMustBeObject
		}
		return Params{}, errRequiredRid
	}
	var rid, token, options []byte // raw values; nil when absent
	extra := false
	ok := sc.object(func(key, value []byte) {
		switch string(key) {
		case "rid":
			rid = value
		case "token":
			token = value
		case "options":
			options = value
		default:
			extra = true
		}
	})
	if !ok || !sc.end() {
		return Params{}, errRequiredRid // not JSON: {}
	}
	switch {
	case rid == nil:
		return Params{}, errRequiredRid
	case token == nil:
		return Params{}, errRequiredToken
	case extra:
		return Params{}, errAdditionalProp
	}
	var p Params
	var err *Error
	if p.Rid, err = coerceRawString(rid); err != nil {
		return Params{}, err
	}
	if p.Token, err = coerceRawString(token); err != nil {
		return Params{}, err
	}
	if options == nil {
		return p, nil
	}
	if options[0] != '{' {
		return Params{}, errMustBeObject
	}
	var comment, tags []byte
	opts := scanner{s: options}
	opts.object(func(key, value []byte) {
		switch string(key) {
		case "comment":
			comment = value
		case "tags":
			tags = value
		}
	})
	if comment != nil && string(comment) != "null" {
		if p.Comment, err = coerceRawString(comment); err != nil {
			return Params{}, err
		}
	}
	if tags != nil {
		if p.Tags, err = coerceRawTags(tags); err != nil {
			return Params{}, err
		}
	}
	return p, nil
}

// coerceRawString is coerceString for a raw JSON value.
func coerceRawString(raw []byte) (string, *Error) {
	switch raw[0] {
	case '"':
		return unquote(raw), nil
	case 't':
		return "true", nil
	case 'f':
		return "false", nil
	case 'n':
		return "", nil
	case '{', '[':
		return "", errMustBeString
	default:
		return jsNumberString(string(raw)), nil
	}
}

// coerceRawTags is coerceTags for a raw JSON value.
func coerceRawTags(raw []byte) ([]string, *Error) {
	switch raw[0] {
	case 'n', 'f':
		return nil, nil
	case '"':
		if string(raw) == `""` {
			return nil, nil
		}
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		if jsNumberString(string(raw)) == "0" {
			return nil, nil
		}
	case '[':
		n := 0
		counter := scanner{s: raw}
		counter.array(func([]byte) { n++ })
		items := make([]string, 0, n) // one allocation, and [] stays non-nil
		var err *Error
		sc := scanner{s: raw}
		sc.array(func(item []byte) {
			if err != nil {
				return
			}
			var s string
			if s, err = coerceRawString(item); err == nil {
				items = append(items, s)
			}
		})
		if err != nil {
			return nil, err
		}
		return items, nil
	}
	return nil, errMustBeArray
}

// unquote decodes a JSON string literal that the scanner has validated,
// into a string of its own.
func unquote(raw []byte) string {
	inner := raw[1 : len(raw)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		return string(inner)
	}
	var b strings.Builder
	b.Grow(len(inner))
	for i := 0; i < len(inner); i++ {
		c := inner[i]
		if c != '\\' {
			b.WriteByte(c)
			continue
		}
		i++
		switch inner[i] {
		case 'b':
			b.WriteByte('\b')
		case 'f':
			b.WriteByte('\f')
		case 'n':
			b.WriteByte('\n')
		case 'r':
			b.WriteByte('\r')
		case 't':
			b.WriteByte('\t')
		case 'u':
			r := hex4(inner[i+1 : i+5])
			i += 4
			if utf16.IsSurrogate(r) {
				// A pair makes one character; a lone half cannot be held in
				// UTF-8 and becomes U+FFFD, as in Go's and MySQL's hands.
				if i+6 < len(inner) && inner[i+1] == '\\' && inner[i+2] == 'u' {
					if r2 := hex4(inner[i+3 : i+7]); utf16.DecodeRune(r, r2) != utf8.RuneError {
						b.WriteRune(utf16.DecodeRune(r, r2))
						i += 6
						continue
					}
				}
				r = utf8.RuneError
			}
			b.WriteRune(r)
		default: // '"', '\\', '/'
			b.WriteByte(inner[i])
		}
	}
	return b.String()
}

func hex4(s []byte) rune {
	var r rune
	for i := 0; i < 4; i++ {
		r = r<<4 | rune(unhex(s[i]))
	}
	return r
}

// scanner walks JSON text, checking its syntax as RFC 8259 has it.
type scanner struct {
	s []byte
	i int
}

func (sc *scanner) peek() byte {
	if sc.i < len(sc.s) {
		return sc.s[sc.i]
	}
	return 0
}

func (sc *scanner) ws() {
	for sc.i < len(sc.s) {
		switch sc.s[sc.i] {
		case ' ', '\t', '\n', '\r':
			sc.i++
		default:
			return
		}
	}
}

// end reports whether only white space is left.
func (sc *scanner) end() bool {
	sc.ws()
	return sc.i == len(sc.s)
}

// object walks the object at the cursor, calling member with each decoded
// key and raw value (both valid only during the call), and reports whether
// it is well-formed.
func (sc *scanner) object(member func(key, value []byte)) bool {
	sc.i++ // '{'
	sc.ws()
	if sc.peek() == '}' {
		sc.i++
		return true
	}
	for {
		key, ok := sc.key()
		if !ok {
			return false
		}
		sc.ws()
		start := sc.i
		if !sc.value() {
			return false
		}
		member(keyName(key), sc.s[start:sc.i])
		sc.ws()
		switch sc.peek() {
		case ',':
			sc.i++
		case '}':
			sc.i++
			return true
		default:
			return false
		}
	}
}

// array walks the array at the cursor, calling item with each raw value.
func (sc *scanner) array(item func(value []byte)) bool {
	sc.i++ // '['
	sc.ws()
	if sc.peek() == ']' {
		sc.i++
		return true
	}
	for {
		sc.ws()
		start := sc.i
		if !sc.value() {
			return false
		}
		item(sc.s[start:sc.i])
		sc.ws()
		switch sc.peek() {
		case ',':
			sc.i++
		case ']':
			sc.i++
			return true
		default:
			return false
		}
	}
}

// value skips one value. Nesting is followed with an explicit stack, not
// recursion, so a body of a million '[' costs memory in proportion, not
// stack frames.
func (sc *scanner) value() bool {
	var stackBuf [32]byte
	stack := stackBuf[:0] // '{' or '[' of each open container
	for {
		// A value is expected here.
		sc.ws()
		switch c := sc.peek(); c {
		case '{', '[':
			sc.i++
			sc.ws()
			if closer := c + 2; sc.peek() == closer { // '{'+2 == '}', '['+2 == ']'
				sc.i++
				break
			}
			stack = append(stack, c)
			if c == '{' {
				if _, ok := sc.key(); !ok {
					return false
				}
			}
			continue
		case '"':
			if !sc.str() {
				return false
			}
		case 't':
			if !sc.literal("true") {
				return false
			}
		case 'f':
			if !sc.literal("false") {
				return false
			}
		case 'n':
			if !sc.literal("null") {
				return false
			}
		default:
			if !sc.number() {
				return false
			}
		}
		// A value ended: close containers, or go on to the next element.
		for {
			if len(stack) == 0 {
				return true
			}
			sc.ws()
			top := stack[len(stack)-1]
			c := sc.peek()
			if c == ',' {
				sc.i++
				if top == '{' {
					if _, ok := sc.key(); !ok {
						return false
					}
				}
				break
			}
			if c != top+2 {
				return false
			}
			sc.i++
			stack = stack[:len(stack)-1]
		}
	}
}

// keyName is the decoded name of the raw key "name": the bytes between the
// quotes, unless it has escapes.
func keyName(raw []byte) []byte {
	inner := raw[1 : len(raw)-1]
	if bytes.IndexByte(inner, '\\') < 0 {
		return inner
	}
	return []byte(unquote(raw))
}

// key skips `"name" :` inside an object and returns the raw "name".
func (sc *scanner) key() (raw []byte, ok bool) {
	sc.ws()
	start := sc.i
	if sc.peek() != '"' || !sc.str() {
		return nil, false
	}
	raw = sc.s[start:sc.i]
	sc.ws()
	if sc.peek() != ':' {
		return nil, false
	}
	sc.i++
	return raw, true
}

func (sc *scanner) literal(word string) bool {
	if bytes.HasPrefix(sc.s[sc.i:], []byte(word)) {
		sc.i += len(word)
		return true
	}
	return false
}

// str skips a string literal, checking escapes and control characters.
func (sc *scanner) str() bool {
	sc.i++ // opening quote
	for sc.i < len(sc.s) {
		c := sc.s[sc.i]
		switch {
		case c == '"':
			sc.i++
			return true
		case c < 0x20:
			return false
		case c == '\\':
			sc.i++
			if sc.i >= len(sc.s) {
				return false
			}
			switch sc.s[sc.i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				sc.i++
			case 'u':
				if sc.i+5 > len(sc.s) {
					return false
				}
				for _, h := range sc.s[sc.i+1 : sc.i+5] {
					if !isHex(h) {
						return false
					}
				}
				sc.i += 5
			default:
				return false
			}
		default:
			sc.i++
		}
	}
	return false
}

// number skips -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (sc *scanner) number() bool {
	digits := func() int {
		n := 0
		for sc.i < len(sc.s) && sc.s[sc.i] >= '0' && sc.s[sc.i] <= '9' {
			sc.i++
			n++
		}
		return n
	}
	if sc.peek() == '-' {
		sc.i++
	}
	switch c := sc.peek(); {
	case c == '0':
		sc.i++
	case c >= '1' && c <= '9':
		digits()
	default:
		return false
	}
	if sc.peek() == '.' {
		sc.i++
		if digits() == 0 {
			return false
		}
	}
	if c := sc.peek(); c == 'e' || c == 'E' {
		sc.i++
		if c := sc.peek(); c == '+' || c == '-' {
			sc.i++
		}
		if digits() == 0 {
			return false
		}
	}
	return true
}
