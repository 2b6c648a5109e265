// Package corpus generates the room.close request bodies that the
// conformance suite sends both to Rocket.Chat's own validator and to the
// module, and that seed the fuzz test.
package corpus

import (
	"fmt"
	"strings"
)

// Case is one request body.
type Case struct {
	Name        string
	ContentType string
	Body        []byte
}

const jsonCT = "application/json"

// DeepNesting is the depth of the corpus body that nests arrays past what
// encoding/json accepts.
const DeepNesting = 20000

// values are JSON literals of every type, for every field.
var values = []string{
	`"abc"`, `""`, `" spaced "`, `"héllo 😀"`, `"ROOM-1"`, `"with\"quote"`, `"nul\u0000byte"`, `"<tag>&amp"`,
	`"\ud83d\ude00"`, `"\ud800"`, `"line\nbreak"`, `"\u2028"`,
	`"` + strings.Repeat("x", 64) + `"`, `"` + strings.Repeat("y", 65) + `"`, `"` + strings.Repeat("z", 300) + `"`,
	`0`, `-0`, `1`, `-1`, `1.5`, `1e21`, `1e-7`, `123456789012345678901`, `0.1`, `1e400`, `42.0`,
	`true`, `false`, `null`,
	`[]`, `["a"]`, `[1]`, `{}`, `{"a":1}`,
}

// tagValues are extra shapes for options.tags.
var tagValues = []string{
	`["a","b"]`, `[1,true,null]`, `[[]]`, `[{}]`, `["x",["y"]]`, `[""]`, `["` + strings.Repeat("t", 100) + `"]`, `0.0`, `""`,
}

// Cases returns the whole corpus, in a fixed order.
func Cases() []Case {
	var cs []Case
	add := func(name, ct, body string) {
		cs = append(cs, Case{Name: fmt.Sprintf("%03d %s", len(cs), name), ContentType: ct, Body: []byte(body)})
	}
	for _, v := range values {
		add("rid="+v, jsonCT, `{"rid":`+v+`,"token":"tok-1"}`)
		add("token="+v, jsonCT, `{"rid":"r-1","token":`+v+`}`)
		add("options="+v, jsonCT, `{"rid":"r-1","token":"tok-1","options":`+v+`}`)
		add("comment="+v, jsonCT, `{"rid":"r-1","token":"tok-1","options":{"comment":`+v+`}}`)
		add("tags="+v, jsonCT, `{"rid":"r-1","token":"tok-1","options":{"tags":`+v+`}}`)
		add("tags=["+v+"]", jsonCT, `{"rid":"r-1","token":"tok-1","options":{"tags":[`+v+`]}}`)
		add("both="+v, jsonCT, `{"rid":`+v+`,"token":`+v+`}`)
		add("extra="+v, jsonCT, `{"rid":"r-1","token":"tok-1","extra":`+v+`}`)
	}
	for _, v := range tagValues {
		add("tags="+v, jsonCT, `{"rid":"r-1","token":"tok-1","options":{"tags":`+v+`}}`)
		add("comment+tags="+v, jsonCT, `{"rid":"r-1","token":"tok-1","options":{"comment":"c","tags":`+v+`}}`)
	}
	// Which error comes first.
	for _, b := range []string{
		`{}`, `{"rid":"r"}`, `{"token":"t"}`, `{"x":1}`, `{"rid":"r","x":1}`, `{"token":"t","x":1}`,
		`{"rid":[],"token":{}}`, `{"rid":"r","token":[],"options":"o"}`, `{"rid":{},"token":"t","x":1}`,
		`{"rid":"r","token":"t","options":{"comment":[],"tags":"bad"}}`, `{"rid":"r","token":"t","options":{"tags":"bad","comment":[]}}`,
		`{"rid":"r","token":"t","options":{"extra":1}}`, `{"rid":"r","token":"t","options":{"comment":null,"tags":null}}`,
		`{"options":{},"token":"t","rid":"r"}`, `{"rid":"a","rid":"b","token":"t"}`, `{"rid":"a","token":"t","rid":[]}`,
		`{"__proto__":{"x":1},"rid":"r","token":"t"}`, `{"constructor":1,"rid":"r","token":"t"}`, `{"RID":"r","token":"t"}`,
		`{"rid":"r","token":"t","options":{"comment":"` + strings.Repeat("long comment ", 500) + `"}}`,
		`{"rid":"ROOM1","token":"visitor-token"}`, `{"rid":"ROOM1","token":"visitor-token","options":{"comment":"done","tags":["a"]}}`,
	} {
		add("shape", jsonCT, b)
	}
	// Not an object, not JSON, odd whitespace and encodings.
	for _, b := range []string{
		`[]`, `[1,2]`, `"str"`, `1`, `true`, `null`, ``, ` `, `{`, `}`, `{"rid":"r",}`, `{'rid':'r'}`, `nul`,
		`{"rid":"r","token":"t"} trailing`, `{"rid":"r","token":"t"}{}`, "\n\t{\"rid\":\"r\",\"token\":\"t\"}\n",
		"\ufeff{\"rid\":\"r\",\"token\":\"t\"}", "\ufeff\ufeff{\"rid\":\"r\",\"token\":\"t\"}", "\ufeff\ufeff\ufeff{\"rid\":\"r\",\"token\":\"t\"}", "\ufeff", `{"rid":"r","token":"t",}`,
		`{"rid":01,"token":"t"}`, `{"rid":.5,"token":"t"}`, `{"rid":NaN,"token":"t"}`, `{"rid":"\x","token":"t"}`,
		"{\"rid\":\"tab\there\",\"token\":\"t\"}", `{"rid":"r","token":"t"}` + strings.Repeat(" ", 100),
	} {
		add("raw", jsonCT, b)
	}
	// Invalid UTF-8 on the wire: decoded with replacement before JSON.parse.
	for _, b := range []string{"\xff", "\xe2\x82", "\xe2\x82A", "x\xe2\x82", "\xf0\x9f\x98", "\xed\xa0\x80", "\xc0\xaf", "\xf4\x90\x80\x80", "a\x80b"} {
		add("bad-utf8", jsonCT, `{"rid":"r`+b+`","token":"t"}`)
		add("bad-utf8-form", "application/x-www-form-urlencoded", "rid=r"+b+"&token=t")
	}
	// Every JSON type at the top level, under each way the router reads a body.
	topLevel := append([]string{`{"rid":"r","token":"t"}`, `[{"rid":"r","token":"t"}]`, `"rid"`}, values...)
	for _, ct := range []string{jsonCT, "text/plain", "", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"} {
		for _, v := range topLevel {
			add("top-level ct="+ct, ct, v)
		}
	}
	// Nesting deeper than encoding/json's limit (10,000), inside options,
	// where unknown keys are allowed: JSON.parse takes any depth.
	add("deep", jsonCT, `{"rid":"r","token":"t","options":{"x":`+strings.Repeat("[", DeepNesting)+strings.Repeat("]", DeepNesting)+`}}`)
	// Content types.
	for _, ct := range []string{"application/json; charset=utf-8", "Application/JSON", "text/plain", "", "application/jsonx",
		"text/plain; x=application/json", "application/vnd.api+json", "application/x-www-form-urlencoded",
		"multipart/form-data; boundary=x", "multipart/form-data; x=application/json", "application/json; x=multipart/form-data"} {
		add("ct="+ct, ct, `{"rid":"r","token":"t"}`)
		add("ct-empty="+ct, ct, ``)
	}
	// Forms: every value is a string.
	for _, b := range []string{
		"rid=r&token=t", "rid=r", "token=t", "rid=r&token=t&extra=1", "rid=r&token=t&options=x", "rid=r&token=t&options=",
		"rid=a+b%21&token=%E2%9C%93", "rid=%zz&token=%4", "rid=1&rid=2&token=t", "rid&token", "rid=&token=",
		"&&rid=r&&token=t&&", "rid=r;token=t", "rid=%F0%9F%98%80&token=t", "rid=%FF&token=%E2%82", "options%5Bcomment%5D=c&rid=r&token=t",
		"RID=r&token=t", "rid=r=s&token=t",
	} {
		add("form", "application/x-www-form-urlencoded", b)
	}
	return cs
}
