package params

import (
	"reflect"
	"testing"
)

func TestValidateFirstErrorAndCoercion(t *testing.T) {
	cases := []struct {
		ct, body string
		want     Params
		err      string
	}{
		{"application/json", `{"rid":"r","token":"t"}`, Params{Rid: "r", Token: "t"}, ""},
		{"application/json", `{"rid":12,"token":true}`, Params{Rid: "12", Token: "true"}, ""},
		{"application/json", `{"rid":null,"token":false}`, Params{Rid: "", Token: "false"}, ""},
		{"application/json", `{"rid":1.50,"token":-0}`, Params{Rid: "1.5", Token: "0"}, ""},
		{"application/json", `{"rid":1e21,"token":1e-7}`, Params{Rid: "1e+21", Token: "1e-7"}, ""},
		{"application/json", `{"rid":123456789012345678901,"token":0.000001}`, Params{Rid: "123456789012345680000", Token: "0.000001"}, ""},
		{"application/json", `{"rid":1e400,"token":-1e400}`, Params{Rid: "Infinity", Token: "-Infinity"}, ""},
		{"application/json", `{"rid":1e-400,"token":-1e-400}`, Params{Rid: "0", Token: "0"}, ""},
		{"application/json", `{"rid":"r","token":"t","options":{"x":[[[{"a":[1,{"b":null}]}]]]}}`, Params{Rid: "r", Token: "t"}, ""},
		{"application/json", `{"rid":"r","token":"t","options":{"x":[[[{"a":[1,{"b":nul}]}]]]}}`, Params{}, "must have required property 'rid'"},
		{"application/json", `{"rid":"r","token":"t","options":{}}`, Params{Rid: "r", Token: "t"}, ""},
		{"application/json", `{"rid":"r","token":"t","options":{"comment":null,"tags":null,"x":{}}}`, Params{Rid: "r", Token: "t"}, ""},
		{"application/json", `{"rid":"r","token":"t","options":{"comment":5,"tags":[1,true,null,"a"]}}`,
			Params{Rid: "r", Token: "t", Comment: "5", Tags: []string{"1", "true", "", "a"}}, ""},
		{"application/json", `{"rid":"r","token":"t","options":{"tags":""}}`, Params{Rid: "r", Token: "t"}, ""},
		{"application/json", `{"rid":"r","token":"t","options":{"tags":0}}`, Params{Rid: "r", Token: "t"}, ""},
		{"application/json", `{"rid":"r","token":"t","options":{"tags":0.0}}`, Params{Rid: "r", Token: "t"}, ""},
		{"application/json", `{"rid":"r","token":"t","options":{"tags":false}}`, Params{Rid: "r", Token: "t"}, ""},
		{"application/json", `{"rid":"r","token":"t","options":{"tags":true}}`, Params{}, "must be array"},
		{"application/json", `{"rid":"r","token":"t","options":{"tags":1}}`, Params{}, "must be array"},
		{"application/json", `{"rid":"r","token":"t","options":{"tags":{}}}`, Params{}, "must be array"},
		{"application/json", `{"rid":"r","token":"t","options":{"comment":[]}}`, Params{}, "must be string"},
		{"application/json", `{"rid":"r","token":"t","options":[]}`, Params{}, "must be object"},
		{"application/json", `{"rid":"r","token":"t","rid":{}}`, Params{}, "must be string"}, // last duplicate wins, as in JSON.parse
		{"application/json", `{"token":"t","rid":"r","options":{"tags":["a",["b"]]}}`, Params{}, "must be string"},
		{"application/json", `{"rid":"r","token":"t"} x`, Params{}, "must have required property 'rid'"},
		{"application/json", "\ufeff{\"rid\":\"r\",\"token\":\"t\"}", Params{Rid: "r", Token: "t"}, ""},
		{"application/json", `  {"rid":"r","token":"t"}  `, Params{Rid: "r", Token: "t"}, ""},
		{"application/json", `{"rid":"r\u00e9\ud83d\ude00","token":"t"}`, Params{Rid: "ré😀", Token: "t"}, ""},
		{"text/plain", `{"rid":"r","token":"t"}`, Params{}, "must have required property 'rid'"},
		{"application/x-www-form-urlencoded", `rid=a+b%21&token=t&token=u`, Params{Rid: "a b!", Token: "u"}, ""},
		{"application/x-www-form-urlencoded", `rid=%zz&token=t`, Params{Rid: "%zz", Token: "t"}, ""},
		{"application/x-www-form-urlencoded", ``, Params{}, "must have required property 'rid'"},
	}
	for _, c := range cases {
		got, err := Parse(c.ct, []byte(c.body))
		if c.err != "" {
			if err == nil || err.Error() != c.err {
				t.Errorf("%s %s: got %+v %v, want error %q", c.ct, c.body, got, err, c.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s %s: unexpected error %q", c.ct, c.body, err)
			continue
		}
		if !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s %s: got %+v, want %+v", c.ct, c.body, got, c.want)
		}
	}
}

func TestJSNumberString(t *testing.T) {
	for lit, want := range map[string]string{
		"0": "0", "-0": "0", "0.0": "0", "1": "1", "-1": "-1", "10": "10", "1.25": "1.25", "100e-2": "1",
		"0.1": "0.1", "1e20": "100000000000000000000", "1e21": "1e+21", "1.5e21": "1.5e+21", "1e-6": "0.000001",
		"1e-7": "1e-7", "-2.5e-8": "-2.5e-8", "9007199254740993": "9007199254740992", "0.30000000000000004": "0.30000000000000004",
		"5e-324": "5e-324", "1.7976931348623157e308": "1.7976931348623157e+308", "123e-20": "1.23e-18", "1e-400": "0", "-1e-400": "0",
	} {
		if got := jsNumberString(lit); got != want {
			t.Errorf("jsNumberString(%s) = %s, want %s", lit, got, want)
		}
	}
}
