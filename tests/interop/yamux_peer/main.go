// Command yamux_peer is a reference yamux peer built on hashicorp/yamux. The
// Python interop tests run it against ytun to check wire compatibility.
//
// Everything written to stdout is part of a line protocol parsed by the
// Python tests; diagnostics go to stderr.
//
// Server mode listens, accepts one TCP connection, runs a yamux server on it
// and echoes every stream the peer opens:
//
//	LISTEN <host:port>
//	ECHO-DONE <streamID> <bytes>     peer sent FIN, everything echoed, FIN sent
//	RESET-REQUESTED <streamID>       stream began with "RESET"; closed unechoed
//	STREAM-RESET <streamID>          stream failed, e.g. the peer sent RST
//	SESSION-CLOSED                   session ended; exit status 0
//
// Client mode dials, runs a yamux client and runs a fixed list of checks
// against a peer that applies the same echo rule, printing "PASS <name>" or
// "FAIL <name>: <reason>" for each and "DONE" at the end. The exit status is
// 0 if every check passed and 1 otherwise. Streams the peer opens in client
// mode are echoed as in server mode.
//
// Whatever the mode, the process exits with status 3 once -timeout has elapsed.
package main

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"flag"
	"fmt"
	"hash"
	"io"
	"log"
	"math/rand"
	"net"
	"os"
	"sync"
	"time"

	"github.com/hashicorp/yamux"
)

// resetMagic at the very start of a stream asks the echo side to abort the
// stream instead of echoing it.
var resetMagic = []byte("RESET")

const (
	// checkTimeout bounds each step of a client check that waits on the peer.
	checkTimeout = 20 * time.Second
	// resetTimeout is how long the reset check waits for the peer's RST.
	resetTimeout = 5 * time.Second
	// pollInterval is how often to re-check conditions this yamux version
	// cannot signal (see readEcho and awaitPeerFIN).
	pollInterval = time.Millisecond
)

var (
	diag     = log.New(os.Stderr, "yamux_peer: ", log.Lmicroseconds)
	stdoutMu sync.Mutex
)

// emit writes one protocol line to stdout. os.Stdout is unbuffered, so the
// line is visible to the reader as soon as emit returns; the mutex keeps lines
// from concurrent goroutines whole.
func emit(format string, args ...any) {
	stdoutMu.Lock()
	defer stdoutMu.Unlock()
	fmt.Fprintf(os.Stdout, format+"\n", args...)
}

func main() {
	mode := flag.String("mode", "", "server or client")
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on (server mode)")
	connect := flag.String("connect", "", "address to connect to (client mode)")
	timeout := flag.Duration("timeout", 60*time.Second, "overall deadline; exit status 3 when it expires")
	flag.Parse()

	time.AfterFunc(*timeout, func() {
		diag.Printf("overall timeout of %v expired", *timeout)
		os.Exit(3)
	})

	cfg := yamux.DefaultConfig()
	cfg.LogOutput = os.Stderr
	cfg.EnableKeepAlive = true

	switch *mode {
	case "server":
		os.Exit(runServer(*listen, cfg))
	case "client":
		if *connect == "" {
			diag.Print("-connect is required in client mode")
			os.Exit(2)
		}
		os.Exit(runClient(*connect, cfg))
	default:
		diag.Printf("-mode must be server or client, not %q", *mode)
		os.Exit(2)
	}
}

func runServer(addr string, cfg *yamux.Config) int {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		diag.Printf("listen: %v", err)
		return 2
	}
	emit("LISTEN %s", ln.Addr())

	conn, err := ln.Accept()
	ln.Close() // exactly one connection is served
	if err != nil {
		diag.Printf("accept: %v", err)
		return 2
	}
	sess, err := yamux.Server(conn, cfg)
	if err != nil {
		diag.Printf("yamux.Server: %v", err)
		return 2
	}

	serveStreams(sess)
	emit("SESSION-CLOSED")
	return 0
}

// serveStreams echoes every stream the peer opens until the session ends,
// then waits for the echo goroutines, which finish promptly because closing
// the session wakes every blocked Read and Write.
func serveStreams(sess *yamux.Session) {
	var wg sync.WaitGroup
	for {
		st, err := sess.AcceptStream()
		if err != nil {
			diag.Printf("accept stream: %v", err)
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			serveEcho(st)
		}()
	}
	wg.Wait()
}

// serveEcho applies the echo rule to one stream.
func serveEcho(st *yamux.Stream) {
	id := st.StreamID()

	head, err := readHead(st, resetMagic)
	if bytes.HasPrefix(head, resetMagic) {
		// hashicorp/yamux cannot send RST on a stream, so the best this side
		// can do is close without echoing.
		st.Close()
		emit("RESET-REQUESTED %d", id)
		return
	}
	if err != nil && err != io.EOF {
		diag.Printf("stream %d: read: %v", id, err)
		emit("STREAM-RESET %d", id)
		return
	}

	// Replay the bytes consumed by readHead, then echo the rest. If readHead
	// already hit EOF, the stream keeps returning EOF, so this stays correct.
	// io.Copy returns a nil error exactly when reading hit EOF.
	n, err := io.Copy(st, io.MultiReader(bytes.NewReader(head), st))
	if err != nil {
		diag.Printf("stream %d: echo: %v", id, err)
		emit("STREAM-RESET %d", id)
		return
	}
	if st.Session().IsClosed() {
		// Streams also read EOF when the whole session goes away; that is
		// not a FIN from the peer, so do not claim a completed echo.
		diag.Printf("stream %d: session closed while echoing", id)
		return
	}
	st.Close()
	emit("ECHO-DONE %d %d", id, n)
}

// readHead reads from r until it holds at least len(magic) bytes, the bytes
// so far can no longer be the start of magic, or a read fails. A single Read
// may return fewer bytes than the peer wrote at once, so one Read is not
// enough to recognise magic.
func readHead(r io.Reader, magic []byte) ([]byte, error) {
	buf := make([]byte, 0, 4096)
	for len(buf) < len(magic) && bytes.HasPrefix(magic, buf) {
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if err != nil {
			return buf, err
		}
	}
	return buf, nil
}

func runClient(addr string, cfg *yamux.Config) int {
	conn, err := net.DialTimeout("tcp", addr, checkTimeout)
	if err != nil {
		diag.Printf("dial: %v", err)
		return 2
	}
	sess, err := yamux.Client(conn, cfg)
	if err != nil {
		diag.Printf("yamux.Client: %v", err)
		return 2
	}
	// Streams opened by the peer get the echo rule too. serveStreams returns
	// once sess is closed below.
	go serveStreams(sess)

	checks := []struct {
		name string
		run  func(*yamux.Session) error
	}{
		{"ping", checkPing},
		{"concurrent100", checkConcurrent100},
		{"big10mib", checkBig10MiB},
		{"halfclose", checkHalfClose},
		{"reset", checkReset},
		{"afterreset", checkAfterReset},
	}
	status := 0
	for _, c := range checks {
		if err := c.run(sess); err != nil {
			emit("FAIL %s: %v", c.name, err)
			status = 1
		} else {
			emit("PASS %s", c.name)
		}
	}

	sess.Close()
	emit("DONE")
	return status
}

// A note on half-close with this yamux version (Debian's 0.0+git20190923):
// Stream.Close sends FIN, but Read then returns io.EOF whenever the receive
// buffer is empty, even though the peer has not sent FIN yet. Data that
// arrives later is still buffered and handed out by later Reads. There is no
// per-stream way to learn that the peer's FIN has arrived, only that the
// stream left the session's table (Session.NumStreams), which happens once
// both sides have sent FIN, or on RST. Hence the client checks:
//
//   - read echoes with readEcho, which knows the expected length and treats
//     io.EOF as "nothing buffered yet" until the deadline;
//   - confirm the peer's FIN with awaitPeerFIN, which waits for NumStreams to
//     fall back to its value from before the check opened its streams. This
//     assumes the peer does not open streams of its own while checks run;
//   - then require a final Read to return io.EOF with no trailing bytes.

// readEcho reads exactly n bytes from st into w before deadline.
func readEcho(st *yamux.Stream, w io.Writer, n int64, deadline time.Time) error {
	buf := make([]byte, 32*1024)
	var got int64
	for got < n {
		if time.Now().After(deadline) {
			return fmt.Errorf("stream %d: echo incomplete: got %d of %d bytes", st.StreamID(), got, n)
		}
		if rest := n - got; rest < int64(len(buf)) {
			buf = buf[:rest]
		}
		k, err := st.Read(buf)
		if k > 0 {
			w.Write(buf[:k])
			got += int64(k)
		}
		switch {
		case err == io.EOF:
			time.Sleep(pollInterval)
		case err != nil:
			return fmt.Errorf("stream %d: read after %d of %d bytes: %w", st.StreamID(), got, n, err)
		}
	}
	return nil
}

// awaitPeerFIN waits until the session has no more than base streams.
func awaitPeerFIN(sess *yamux.Session, base int, deadline time.Time) error {
	for sess.NumStreams() > base {
		if time.Now().After(deadline) {
			return fmt.Errorf("peer did not close its side: %d streams still open, want %d", sess.NumStreams(), base)
		}
		time.Sleep(pollInterval)
	}
	return nil
}

// expectEOF checks that nothing but EOF is left to read from a stream both
// sides have closed.
func expectEOF(st *yamux.Stream) error {
	var b [64]byte
	n, err := st.Read(b[:])
	switch {
	case n > 0:
		return fmt.Errorf("stream %d: %d unexpected bytes after the echo: %q", st.StreamID(), n, b[:n])
	case err != io.EOF:
		return fmt.Errorf("stream %d: want EOF after the echo, got %v", st.StreamID(), err)
	}
	return nil
}

// echoRoundTrip sends payload, half-closes the stream, and checks that the
// peer echoes exactly payload and then closes its side.
func echoRoundTrip(sess *yamux.Session, payload []byte) error {
	base := sess.NumStreams()
	deadline := time.Now().Add(checkTimeout)
	st, err := sess.OpenStream()
	if err != nil {
		return fmt.Errorf("open stream: %w", err)
	}
	if _, err := st.Write(payload); err != nil {
		return fmt.Errorf("stream %d: write: %w", st.StreamID(), err)
	}
	st.Close()
	var echo bytes.Buffer
	if err := readEcho(st, &echo, int64(len(payload)), deadline); err != nil {
		return err
	}
	if !bytes.Equal(echo.Bytes(), payload) {
		return fmt.Errorf("stream %d: echo %q, want %q", st.StreamID(), echo.Bytes(), payload)
	}
	if err := awaitPeerFIN(sess, base, deadline); err != nil {
		return err
	}
	return expectEOF(st)
}

func checkPing(sess *yamux.Session) error {
	rtt, err := sess.Ping()
	if err != nil {
		return err
	}
	diag.Printf("ping rtt %v", rtt)
	return nil
}

func checkConcurrent100(sess *yamux.Session) error {
	const (
		streams = 100
		size    = 64 * 1024
	)
	base := sess.NumStreams()
	deadline := time.Now().Add(checkTimeout)

	// Each goroutine sends its payload, half-closes, and reads the echo back.
	// The echo fits in the initial 256 KiB receive window, so the peer can
	// send it all even if it only starts echoing after our FIN.
	opened := make([]*yamux.Stream, streams)
	errs := make([]error, streams)
	var wg sync.WaitGroup
	for i := 0; i < streams; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			payload := make([]byte, size)
			rand.New(rand.NewSource(int64(i + 1))).Read(payload)

			st, err := sess.OpenStream()
			if err != nil {
				errs[i] = fmt.Errorf("open stream: %w", err)
				return
			}
			opened[i] = st
			if _, err := st.Write(payload); err != nil {
				errs[i] = fmt.Errorf("stream %d: write: %w", st.StreamID(), err)
				return
			}
			st.Close()
			var echo bytes.Buffer
			if err := readEcho(st, &echo, size, deadline); err != nil {
				errs[i] = err
				return
			}
			if !bytes.Equal(echo.Bytes(), payload) {
				errs[i] = fmt.Errorf("stream %d: echo differs from the %d bytes sent", st.StreamID(), size)
			}
		}(i)
	}
	wg.Wait()
	if err := firstError(errs); err != nil {
		return err
	}

	if err := awaitPeerFIN(sess, base, deadline); err != nil {
		return err
	}
	for _, st := range opened {
		if err := expectEOF(st); err != nil {
			return err
		}
	}
	return nil
}

// firstError summarises errs by the first non-nil one and how many there are.
// (errors.Join needs Go 1.20; Debian bookworm ships 1.19.)
func firstError(errs []error) error {
	var first error
	failed := 0
	for _, err := range errs {
		if err != nil {
			if first == nil {
				first = err
			}
			failed++
		}
	}
	if failed > 1 {
		return fmt.Errorf("%d of %d streams failed; first: %w", failed, len(errs), first)
	}
	return first
}

func checkBig10MiB(sess *yamux.Session) error {
	const size = 10 << 20
	base := sess.NumStreams()
	deadline := time.Now().Add(checkTimeout)
	st, err := sess.OpenStream()
	if err != nil {
		return fmt.Errorf("open stream: %w", err)
	}

	// The echo is far larger than the receive window, so reading has to run
	// alongside writing. The FIN goes out as soon as the last byte is written,
	// so the peer keeps echoing on a stream it has seen FIN on.
	sent := sha256.New()
	writeErr := make(chan error, 1)
	go func() {
		src := io.TeeReader(io.LimitReader(rand.New(rand.NewSource(0xB16)), size), sent)
		_, err := io.Copy(st, src)
		st.Close()
		writeErr <- err
	}()

	received := sha256.New()
	if err := readEcho(st, received, size, deadline); err != nil {
		// Wake the writer if it is still waiting for send window.
		st.Close()
		<-writeErr
		return err
	}
	if err := <-writeErr; err != nil {
		return fmt.Errorf("stream %d: write: %w", st.StreamID(), err)
	}
	if !bytes.Equal(sum(sent), sum(received)) {
		return fmt.Errorf("stream %d: sha256 of echo %x, want %x", st.StreamID(), sum(received), sum(sent))
	}
	if err := awaitPeerFIN(sess, base, deadline); err != nil {
		return err
	}
	return expectEOF(st)
}

func sum(h hash.Hash) []byte { return h.Sum(nil) }

func checkHalfClose(sess *yamux.Session) error {
	return echoRoundTrip(sess, []byte("hello"))
}

func checkReset(sess *yamux.Session) error {
	st, err := sess.OpenStream()
	if err != nil {
		return fmt.Errorf("open stream: %w", err)
	}
	// On failure, at least FIN the stream so it does not linger.
	defer st.Close()
	if _, err := st.Write([]byte("RESET please")); err != nil {
		return fmt.Errorf("stream %d: write: %w", st.StreamID(), err)
	}
	st.SetReadDeadline(time.Now().Add(resetTimeout))
	var b [64]byte
	n, err := st.Read(b[:])
	switch {
	case n > 0:
		return fmt.Errorf("stream %d: got data %q instead of a reset", st.StreamID(), b[:n])
	case err == nil:
		return fmt.Errorf("stream %d: empty read instead of a reset", st.StreamID())
	case err == io.EOF:
		return fmt.Errorf("stream %d: got a clean EOF (FIN) instead of a reset", st.StreamID())
	case errors.Is(err, yamux.ErrTimeout):
		return fmt.Errorf("stream %d: no reset within %v", st.StreamID(), resetTimeout)
	}
	diag.Printf("stream %d: read failed as expected: %v", st.StreamID(), err)
	return nil
}

func checkAfterReset(sess *yamux.Session) error {
	return echoRoundTrip(sess, []byte("still alive after reset"))
}
