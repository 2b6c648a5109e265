// Command delayproxy forwards TCP connections to -target, holding every
// chunk of data -delay before passing it on, in both directions: a database
// one network hop away, on loopback. The benchmarks put it between Caddy and
// MariaDB, so that a close costs its round trips in latency, as it does from
// an edge node, and not only in CPU.
package main

import (
	"flag"
	"log"
	"net"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:13306", "address to listen on")
	target := flag.String("target", "127.0.0.1:3306", "address to forward to")
	delay := flag.Duration("delay", 250*time.Microsecond, "one-way delay added to every chunk")
	flag.Parse()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	for {
		client, err := ln.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go func() {
			server, err := net.Dial("tcp", *target)
			if err != nil {
				client.Close()
				return
			}
			go forward(server, client, *delay)
			forward(client, server, *delay)
		}()
	}
}

type chunk struct {
	data []byte
	due  time.Time
}

// forward copies src to dst, each chunk delay after it was read, in order.
func forward(dst, src net.Conn, delay time.Duration) {
	queue := make(chan chunk, 1024)
	go func() {
		defer close(queue)
		for {
			buf := make([]byte, 32<<10)
			n, err := src.Read(buf)
			if n > 0 {
				queue <- chunk{buf[:n], time.Now().Add(delay)}
			}
			if err != nil {
				return
			}
		}
	}()
	for c := range queue {
		time.Sleep(time.Until(c.due))
		if _, err := dst.Write(c.data); err != nil {
			break
		}
	}
	dst.Close()
	src.Close()
}
