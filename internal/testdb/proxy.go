package testdb

import (
	"net"
	"sync"
	"testing"
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
	ln, err := net.Listen("tcp", "127.0.0.1:0")
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

func (p *Proxy) forward(c net.Conn) {
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.track(s)
	go p.pipe(s, c)
	p.pipe(c, s)
}

// pipe copies src to dst, holding data back while the proxy is frozen.
func (p *Proxy) pipe(dst, src net.Conn) {
	defer dst.Close()
	defer src.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			frozen, isFrozen := p.frozen, p.state == proxyFrozen
			p.mu.Unlock()
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
	p.setLocked(proxyDown)
	for c := range p.conns {
		c.Close()
	}
	clear(p.conns)
}

// Freeze keeps connections open but passes no bytes: a database that hangs.
func (p *Proxy) Freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.setLocked(proxyFrozen)
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
