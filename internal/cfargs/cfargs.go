// Package cfargs reads the arguments of a Caddyfile subdirective, the same
// way for every directive of the module: exactly the arguments asked for,
// each error naming the subdirective (and, through the dispenser, its line).
package cfargs

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// One reads the subdirective's single argument.
func One(d *caddyfile.Dispenser) (string, error) {
	var v string
	if !d.AllArgs(&v) {
		return "", d.ArgErr()
	}
	return v, nil
}

// Int reads the subdirective's single argument as a whole number.
func Int(d *caddyfile.Dispenser) (int, error) {
	name := d.Val()
	arg, err := One(d)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(arg)
	if err != nil {
		return 0, d.Errf("%s: not a whole number: %q", name, arg)
	}
	return n, nil
}

// Duration reads the subdirective's single argument as a duration.
func Duration(d *caddyfile.Dispenser) (caddy.Duration, error) {
	name := d.Val()
	arg, err := One(d)
	if err != nil {
		return 0, err
	}
	v, err := caddy.ParseDuration(arg)
	if err != nil {
		return 0, d.Errf("%s: not a duration: %q", name, arg)
	}
	return caddy.Duration(v), nil
}

// None checks that the subdirective has no argument.
func None(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	return nil
}
