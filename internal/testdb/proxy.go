package testdb

import (
	"bytes"
	"net"
	"sync"
	"testing"
	"time"
)

// Proxy is a TCP forwarder between the gateway and the database server that
// a test can take down or freeze, to play a database that is gone or hangs.
type Proxy struct {
	Addr   string
	target string
	ln     net.Listener

	mu     sync.Mutex
	state  proxyState
	conns  map[net.Conn]struct{}
	frozen chan struct{} // closed when the proxy thaws
	// freezeOn, when set, freezes the proxy as a client sends this COM_QUERY
	// packet; deliverTrigger says whether the packet itself gets through.
	freezeOn       []byte
	deliverTrigger bool

	commands int           // client commands seen (each one round trip)
	delay    time.Duration // added to everything a client sends
}

type proxyState int

const (
	proxyUp proxyState = iota
	proxyDown
	proxyFrozen
)

// StartProxy forwards a loopback port to target until the test ends.
func StartProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	return StartProxyOn(t, "127.0.0.1:0", target)
}

// StartProxyOn is StartProxy on the address addr: a database that appears
// where a gateway has been trying to reach it.
func StartProxyOn(t testing.TB, addr, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{Addr: ln.Addr().String(), target: target, ln: ln, conns: map[net.Conn]struct{}{}, frozen: make(chan struct{})}
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.Down()
		p.Up()
	})
	return p
}

func (p *Proxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		state, frozen := p.state, p.frozen
		p.mu.Unlock()
		switch state {
		case proxyDown:
			c.Close() // the server is gone: connection refused, as near as TCP allows
			continue
		case proxyFrozen:
			p.track(c)
			go func() { <-frozen; p.forward(c) }()
			continue
		}
		p.track(c)
		go p.forward(c)
	}
}

func (p *Proxy) track(c net.Conn) {
	p.mu.Lock()
	p.conns[c] = struct{}{}
	p.mu.Unlock()
}

func (p *Proxy) untrack(c net.Conn) {
	c.Close()
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
}

func (p *Proxy) forward(c net.Conn) {
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.track(s)
	go p.pipe(s, c, true)
	p.pipe(c, s, false)
}

// pipe copies src to dst, holding data back while the proxy is frozen.
func (p *Proxy) pipe(dst, src net.Conn, toServer bool) {
	defer p.untrack(dst)
	defer p.untrack(src)
	buf := make([]byte, 32<<10)
	var counter commandCounter
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			if toServer {
				p.commands += counter.feed(buf[:n])
			}
			deliverFirst := false
			if toServer && p.freezeOn != nil && bytes.Contains(buf[:n], p.freezeOn) {
				p.freezeOn = nil
				p.setLocked(proxyFrozen)
				deliverFirst = p.deliverTrigger
			}
			frozen, isFrozen, delay := p.frozen, p.state == proxyFrozen, p.delay
			p.mu.Unlock()
			if toServer && delay > 0 {
				time.Sleep(delay)
			}
			if deliverFirst {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					return
				}
				n = 0
			}
			if isFrozen {
				<-frozen
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// Down closes every connection and refuses new ones.
func (p *Proxy) Down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	// Connections first: a frozen pipe that wakes must find them closed
	// rather than deliver what it held.
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
	p.setLocked(proxyDown)
}

// Freeze keeps connections open but passes no bytes: a database that hangs.
func (p *Proxy) Freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.setLocked(proxyFrozen)
}

// FreezeAt freezes the proxy when a client next sends the statement query
// as a text-protocol COM_QUERY (such as COMMIT): with deliver false the
// statement is held back with everything else, with deliver true it reaches
// the server and only what follows (its answer) is held.
func (p *Proxy) FreezeAt(query string, deliver bool) {
	p.FreezeWhenSent(append([]byte{0x03}, query...), deliver) // COM_QUERY
}

// FreezeWhenSent is FreezeAt for the next chunk a client sends that
// contains b, such as an argument of a prepared statement's execution.
func (p *Proxy) FreezeWhenSent(b []byte, deliver bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.freezeOn = b
	p.deliverTrigger = deliver
}

// SetDelay holds what clients send back for d before passing it on: a
// database farther away (Go's timers add up to a millisecond more).
func (p *Proxy) SetDelay(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.delay = d
}

// Up forwards again.
func (p *Proxy) Up() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.setLocked(proxyUp)
}

func (p *Proxy) setLocked(s proxyState) {
	if p.state == proxyFrozen && s != proxyFrozen {
		close(p.frozen)
		p.frozen = make(chan struct{})
	}
	p.state = s
}

// Conns counts the connections the proxy holds open (both sides of each).
func (p *Proxy) Conns() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// Commands is how many commands clients have sent through the proxy: each
// is one round trip (a query, a prepared statement's execution, BEGIN,
// COMMIT, …), as the MySQL protocol has no pipelining.
func (p *Proxy) Commands() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.commands
}

// commandCounter finds the packets that start a command in a client's
// stream: those with sequence number 0, past the handshake.
type commandCounter struct {
	header  []byte // the partial header of the next packet
	skip    int    // payload bytes of the current packet still to come
	packets int
}

func (c *commandCounter) feed(b []byte) (commands int) {
	for len(b) > 0 {
		if c.skip > 0 {
			n := min(c.skip, len(b))
			c.skip -= n
			b = b[n:]
			continue
		}
		n := min(4-len(c.header), len(b))
		c.header = append(c.header, b[:n]...)
		b = b[n:]
		if len(c.header) < 4 {
			return commands
		}
		length := int(c.header[0]) | int(c.header[1])<<8 | int(c.header[2])<<16
		seq := c.header[3]
		c.header = c.header[:0]
		c.skip = length
		c.packets++
		// The client's first packet is its handshake response (sequence 1);
		// every later packet with sequence 0 begins a command.
		if seq == 0 && c.packets > 1 {
			commands++
		}
	}
	return commands
}
