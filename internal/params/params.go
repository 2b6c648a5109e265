// Package params reads and validates the body of POST voip/room.close the
// way Rocket.Chat does: its body parsing rules, then its AJV schema
// (isVoipRoomCloseProps, compiled with coerceTypes: true and allErrors off),
// reproduced check for check so that the first error and its message are
// the same as Rocket.Chat's.
package params

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"strconv"
	"strings"
)

// Params is a valid, coerced room.close body.
type Params struct {
	Rid   string
	Token string
	// Comment is options.comment; "" when absent or null (which Rocket.Chat
	// treats as no comment too).
	Comment string
	// Tags is options.tags; nil when absent, null or coerced to null.
	Tags []string
}

// Error is a validation failure; its message is AJV's, without a field path.
type Error struct{ Message string }

func (e *Error) Error() string { return e.Message }

// The messages AJV produces for this schema.
var (
	errMustBeObject   = &Error{"must be object"}
	errMustBeString   = &Error{"must be string"}
	errMustBeArray    = &Error{"must be array"}
	errRequiredRid    = &Error{"must have required property 'rid'"}
	errRequiredToken  = &Error{"must have required property 'token'"}
	errAdditionalProp = &Error{"must NOT have additional properties"}
)

const utf8BOM = "\ufeff"

// trimBOMs drops the byte-order marks that Node's Request.json() drops: it
// strips one while decoding the bytes and its TextDecoder strips a second,
// so up to two leading BOMs vanish and a third is a JSON syntax error.
func trimBOMs(body []byte) []byte {
	return bytes.TrimPrefix(bytes.TrimPrefix(body, []byte(utf8BOM)), []byte(utf8BOM))
}

// Parse reads a room.close body as Rocket.Chat would and validates it: the
// content type is matched with a case-sensitive "contains"; a JSON body is
// decoded as UTF-8 with replacement, a leading BOM dropped, and if it does
// not parse it is {}; a form becomes an object of strings (the last of
// repeated keys wins); any other body becomes an object without 'rid'.
// The strings of Params are copies: body may be reused once Parse returns.
func Parse(contentType string, body []byte) (Params, error) {
	p, err := parse(contentType, body)
	if err != nil { // not a nil *Error in a non-nil error
		return Params{}, err
	}
	return p, nil
}

func parse(contentType string, body []byte) (Params, *Error) {
	switch {
	case strings.Contains(contentType, "multipart/form-data"):
		return Params{}, errRequiredRid // the router does not read multipart bodies: {}
	case strings.Contains(contentType, "application/json"):
		return parseJSON(trimBOMs(body))
	case strings.Contains(contentType, "application/x-www-form-urlencoded"):
		return validate(decodeForm(string(wellFormedUTF8(body))))
	default:
		// Rocket.Chat spreads a text body into an object ({0:'a',1:'b',…}),
		// which never has 'rid'.
		return Params{}, errRequiredRid
	}
}

func decodeForm(s string) map[string]any {
	out := map[string]any{}
	for s != "" {
		var pair string
		pair, s, _ = strings.Cut(s, "&")
		if pair == "" {
			continue
		}
		k, v, _ := strings.Cut(pair, "=")
		out[formUnescape(k)] = formUnescape(v)
	}
	return out
}

// validate checks a decoded body (a form, or JSON decoded generically)
// against the room.close schema and returns the coerced
// parameters or the first error, in AJV's order: type of the body, required
// properties (rid, then token), additional properties, then each property's
// type (rid, token, options.comment, options.tags, each tag).
func validate(v any) (Params, *Error) {
	obj, ok := v.(map[string]any)
	if !ok {
		return Params{}, errMustBeObject
	}
	rawRid, hasRid := obj["rid"]
	if !hasRid {
		return Params{}, errRequiredRid
	}
	rawToken, hasToken := obj["token"]
	if !hasToken {
		return Params{}, errRequiredToken
	}
	for k := range obj {
		if k != "rid" && k != "token" && k != "options" {
			return Params{}, errAdditionalProp
		}
	}
	var p Params
	var err *Error
	if p.Rid, err = coerceString(rawRid); err != nil {
		return Params{}, err
	}
	if p.Token, err = coerceString(rawToken); err != nil {
		return Params{}, err
	}
	rawOptions, hasOptions := obj["options"]
	if !hasOptions {
		return p, nil
	}
	options, ok := rawOptions.(map[string]any)
	if !ok {
		return Params{}, errMustBeObject
	}
	if c, present := options["comment"]; present && c != nil {
		if p.Comment, err = coerceString(c); err != nil {
			return Params{}, err
		}
	}
	if t, present := options["tags"]; present {
		if p.Tags, err = coerceTags(t); err != nil {
			return Params{}, err
		}
	}
	return p, nil
}

// coerceString applies AJV's coercion to type "string": numbers and booleans
// become their JavaScript string, null becomes "", objects and arrays fail.
func coerceString(v any) (string, *Error) {
	switch x := v.(type) {
	case string:
		return x, nil
	case json.Number:
		return jsNumberString(string(x)), nil
	case bool:
		return strconv.FormatBool(x), nil
	case nil:
		return "", nil
	default:
		return "", errMustBeString
	}
}

// coerceTags applies type ["array","null"]: null stays null, AJV coerces
// "", 0 and false to null, each item is coerced to a string.
func coerceTags(v any) ([]string, *Error) {
	switch x := v.(type) {
	case nil:
		return nil, nil
	case string:
		if x == "" {
			return nil, nil
		}
	case bool:
		if !x {
			return nil, nil
		}
	case json.Number:
		if f, err := strconv.ParseFloat(string(x), 64); err == nil && f == 0 {
			return nil, nil
		}
	case []any:
		tags := make([]string, len(x))
		for i, item := range x {
			s, err := coerceString(item)
			if err != nil {
				return nil, err
			}
			tags[i] = s
		}
		return tags, nil
	}
	return nil, errMustBeArray
}

// jsNumberString formats a JSON number literal as JavaScript's String(n)
// would after JSON.parse: the shortest round-trip digits of the double,
// in plain notation from 1e-6 up to 1e21 and exponent notation outside.
func jsNumberString(lit string) string {
	f, err := strconv.ParseFloat(lit, 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return lit // cannot happen for a literal the scanner accepted
	}
	// Out of range, f is ±Inf or ±0, as for JavaScript.
	switch {
	case math.IsInf(f, 1):
		return "Infinity"
	case math.IsInf(f, -1):
		return "-Infinity"
	case f == 0:
		return "0"
	}
	var b strings.Builder
	if f < 0 {
		b.WriteByte('-')
		f = -f
	}
	e := strconv.FormatFloat(f, 'e', -1, 64) // d.ddddde±XX
	mant, expStr, _ := strings.Cut(e, "e")
	digits := strings.Replace(mant, ".", "", 1)
	exp, _ := strconv.Atoi(expStr)
	k, n := len(digits), exp+1
	switch {
	case k <= n && n <= 21:
		b.WriteString(digits)
		b.WriteString(strings.Repeat("0", n-k))
	case 0 < n && n <= 21:
		b.WriteString(digits[:n])
		b.WriteByte('.')
		b.WriteString(digits[n:])
	case -6 < n && n <= 0:
		b.WriteString("0.")
		b.WriteString(strings.Repeat("0", -n))
		b.WriteString(digits)
	default:
		b.WriteByte(digits[0])
		if k > 1 {
			b.WriteByte('.')
			b.WriteString(digits[1:])
		}
		b.WriteByte('e')
		if n-1 >= 0 {
			b.WriteByte('+')
		}
		b.WriteString(strconv.Itoa(n - 1))
	}
	return b.String()
}
