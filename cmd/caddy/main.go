// Command caddy is Caddy with the rocketchat_voip module plugged in: the
// same binary that 'xcaddy build --with github.com/edgevoip/caddy-rocketchat-voip'
// produces, buildable with plain 'go build' for the demo, tests and benchmarks.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/edgevoip/caddy-rocketchat-voip"
)

func main() {
	caddycmd.Main()
}
