// Package control serves the live control socket of a running migration: a
// unix socket speaking one command per line, with gh-ost's command names
// where the meaning is the same (status, throttle, chunk-size=N, ...).
//
// Protocol (see also the help command, commands.go):
//
//   - A client sends commands, one per line ("\n"; a trailing "\r" and
//     surrounding whitespace are ignored, empty lines are ignored and get no
//     answer). The command name is case-insensitive; values are passed on as
//     written, after trimming.
//   - Every other line gets exactly one answer, ending in "\n". An answer is
//     one line except for help and status (text), which span several. A
//     failure is one line starting with "error: ".
//   - As in gh-ost, the server closes the connection once it has answered
//     every command received so far (several lines sent at once are all
//     answered), so `echo status | nc -U sock` prints the answer and exits
//     with any netcat, whether or not it half-closes. The command
//     "interactive" keeps the connection open until the client closes it
//     (`socat READLINE UNIX-CONNECT:sock`, then type "interactive").
//   - A line longer than 64 KiB is answered with an error and the connection
//     is closed; a connection idle for 10 minutes is told so and closed; at
//     most 64 connections are served at once.
//   - A successful setting change or action answers "OK"; NAME=? answers the
//     setting's current value as the Handler formats it.
package control

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"

	"github.com/osc-dev/osc/status"
)

// Handler is what the socket controls; the migration runner implements it.
// Its methods may be called concurrently from several connections. They
// must not call Server.Close (nor wait for it): Close waits for the calls
// in progress. A panic in a method is recovered and answered as an error.
type Handler interface {
	Status() status.Snapshot
	// Get reads a setting's current value as text; Set validates and
	// changes it. Settings: chunk-size, chunk-time, max-lag-millis,
	// max-load, critical-load, throttle-query (the Setting constants). The
	// value passed to Set is trimmed and may be empty (e.g. to clear
	// max-load or throttle-query); it is the Handler's to validate.
	Get(setting string) (string, error)
	Set(setting, value string) error
	// Do performs an action: "throttle", "no-throttle", "pause-all",
	// "resume-all", "unpostpone", "abort" (the Action constants). It should
	// start the action and return, not wait for its consequences (for abort,
	// not for the run to end).
	Do(action string) error
}

// Settings, as passed to Handler.Get and Handler.Set.
const (
	SettingChunkSize     = "chunk-size"
	SettingChunkTime     = "chunk-time"
	SettingMaxLagMillis  = "max-lag-millis"
	SettingMaxLoad       = "max-load"
	SettingCriticalLoad  = "critical-load"
	SettingThrottleQuery = "throttle-query"
)

// Actions, as passed to Handler.Do.
const (
	ActionThrottle   = "throttle"
	ActionNoThrottle = "no-throttle"
	ActionPauseAll   = "pause-all"
	ActionResumeAll  = "resume-all"
	ActionUnpostpone = "unpostpone"
	ActionAbort      = "abort"
)

// config holds the limits that keep a client from pinning resources.
type config struct {
	maxLine      int           // longest accepted line, newline included
	idle         time.Duration // a connection idle this long is closed
	writeTimeout time.Duration // a client not reading its answer this long is dropped
	maxConns     int           // connections served at once
}

var defaultConfig = config{
	maxLine:      64 << 10,
	idle:         10 * time.Minute,
	writeTimeout: 10 * time.Second,
	maxConns:     64,
}

// Server is a listening control socket.
type Server struct {
	path string
	id   fs.FileInfo // the socket file we created, to remove only our own
	ln   *net.UnixListener
	h    Handler
	log  *zap.Logger
	cfg  config

	mu     sync.Mutex
	closed bool
	conns  map[net.Conn]struct{}
	wg     sync.WaitGroup // the accept loop and the connections

	closeOnce sync.Once
	closeErr  error
}

// Listen serves h on a unix socket at path, readable and writable by the
// owner only (mode 0600; the file is never accessible to others, whatever
// the umask). If path exists: a socket something accepts connections on is
// refused ("another osc is running on ...?"), a stale socket is removed and
// replaced, anything else is refused. log may be nil.
func Listen(path string, h Handler, log *zap.Logger) (*Server, error) {
	return listen(path, h, log, defaultConfig)
}

func listen(path string, h Handler, log *zap.Logger, cfg config) (*Server, error) {
	if h == nil {
		return nil, errors.New("control socket: nil Handler")
	}
	if path == "" {
		return nil, errors.New("control socket: empty path")
	}
	if log == nil {
		log = zap.NewNop()
	}
	if n := len(path); n > maxSunPath() {
		return nil, fmt.Errorf("control socket %s: path is %d bytes, longer than the unix socket limit of %d; choose a shorter path", path, n, maxSunPath())
	}
	if err := clearPath(path, log); err != nil {
		return nil, err
	}
	ln, id, err := bindPrivate(path)
	if err != nil {
		return nil, err
	}
	s := &Server{path: path, id: id, ln: ln, h: h, log: log, cfg: cfg, conns: map[net.Conn]struct{}{}}
	s.wg.Add(1)
	go s.acceptLoop()
	log.Info("control socket listening", zap.String("path", path))
	return s, nil
}

// maxSunPath is the longest socket path bind and connect accept.
func maxSunPath() int {
	if runtime.GOOS == "linux" {
		return 108
	}
	return 103 // the BSDs and macOS: 104 bytes including the NUL
}

// clearPath makes way for the socket: nothing there, or a stale socket
// (removed). A live socket, an unprobeable one or a non-socket is refused.
func clearPath(path string, log *zap.Logger) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("control socket %s: %w", path, err)
	}
	if fi.Mode()&fs.ModeSocket == 0 {
		return fmt.Errorf("control socket %s: the path exists and is not a socket (mode %s); refusing to replace it", path, fi.Mode())
	}
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	switch {
	case err == nil:
		c.Close()
		return fmt.Errorf("control socket %s accepts connections: another osc is running on %s? stop it or choose another socket path", path, path)
	case errors.Is(err, syscall.ECONNREFUSED):
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("control socket %s is stale but cannot be removed: %w", path, err)
		}
		log.Info("removed stale control socket", zap.String("path", path))
		return nil
	case errors.Is(err, fs.ErrNotExist):
		return nil // removed meanwhile
	}
	return fmt.Errorf("control socket %s exists and cannot be probed (%v): another osc is running on %s? remove the file if not", path, err, path)
}

// bindPrivate creates the socket at path without a moment where others could
// reach it: it binds inside a fresh 0700 directory next to path, chmods the
// socket to 0600 there, then hard-links it into place (which, unlike rename,
// fails rather than replace a file created meanwhile by another process).
func bindPrivate(path string) (*net.UnixListener, fs.FileInfo, error) {
	dir, err := os.MkdirTemp(filepath.Dir(path), "") // mode 0700; same file system as path
	if err != nil {
		return nil, nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	defer os.RemoveAll(dir)
	tmp := filepath.Join(dir, "s")
	if len(tmp) > maxSunPath() {
		return nil, nil, fmt.Errorf("control socket %s: the directory name is too long to create the socket safely (the temporary %s would be %d bytes, limit %d); choose a shorter path", path, tmp, len(tmp), maxSunPath())
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, nil, fmt.Errorf("control socket %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false) // Close removes path; the temporary name is gone
	fail := func(err error) (*net.UnixListener, fs.FileInfo, error) {
		ln.Close()
		return nil, nil, err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(fmt.Errorf("control socket %s: %w", path, err))
	}
	if err := os.Link(tmp, path); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fail(fmt.Errorf("control socket %s appeared while starting: another osc is running on %s?", path, path))
		}
		// A file system without hard links: rename is as private, but
		// would replace a file created since clearPath.
		if err := os.Rename(tmp, path); err != nil {
			return fail(fmt.Errorf("control socket %s: %w", path, err))
		}
	}
	id, err := os.Lstat(path)
	if err != nil {
		return fail(fmt.Errorf("control socket %s: %w", path, err))
	}
	return ln, id, nil
}

// Path is where the server listens.
func (s *Server) Path() string { return s.path }

// Close stops accepting, lets the commands in progress finish and answer
// (an abort's answer is written while the run it ended shuts down), ends
// the client connections, and removes the socket file (unless it is no
// longer the one Listen created). It may be called more than once.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		// Idle readers wake now; an answer being written gets a second.
		for c := range s.conns {
			c.SetReadDeadline(time.Now())
			c.SetWriteDeadline(time.Now().Add(time.Second))
		}
		s.mu.Unlock()
		err := s.ln.Close()
		if errors.Is(err, net.ErrClosed) {
			err = nil
		}
		s.wg.Wait()
		if fi, e := os.Lstat(s.path); e == nil && os.SameFile(fi, s.id) {
			if e := os.Remove(s.path); e != nil && err == nil {
				err = e
			}
		}
		if err != nil {
			err = fmt.Errorf("control socket %s: %w", s.path, err)
		}
		s.closeErr = err
		s.log.Info("control socket closed", zap.String("path", s.path))
	})
	return s.closeErr
}

func (s *Server) acceptLoop() {
	defer s.wg.Done()
	var delay time.Duration
	for {
		c, err := s.ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed || errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of descriptors or the like: back off, retry.
			delay = min(max(2*delay, 10*time.Millisecond), time.Second)
			s.log.Warn("control socket accept failed", zap.String("path", s.path), zap.Error(err), zap.Duration("retry_in", delay))
			time.Sleep(delay)
			continue
		}
		delay = 0
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			return
		}
		s.wg.Add(1)
		if len(s.conns) >= s.cfg.maxConns {
			s.mu.Unlock()
			s.log.Warn("control socket: too many connections", zap.Int("limit", s.cfg.maxConns))
			go func() {
				defer s.wg.Done()
				s.reply(c, errorLine(fmt.Sprintf("too many control connections (limit %d); try again later", s.cfg.maxConns)))
				linger(c)
				c.Close()
			}()
			continue
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		go s.serve(c)
	}
}

// serve answers the lines of one connection until end of input.
func (s *Server) serve(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("control connection panicked", zap.Any("panic", v), zap.Stack("stack"))
		}
	}()
	// A line, its "\n" included, must fit in the buffer.
	r := bufio.NewReaderSize(c, s.cfg.maxLine)
	interactive := false
	for {
		// Under the lock, so that Close's deadline is never overwritten.
		s.mu.Lock()
		closed := s.closed
		if !closed && s.cfg.idle > 0 {
			c.SetReadDeadline(time.Now().Add(s.cfg.idle))
		}
		s.mu.Unlock()
		if closed {
			return
		}
		line, err := r.ReadSlice('\n')
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			s.log.Warn("control command rejected: line too long", zap.Int("limit", s.cfg.maxLine))
			s.reply(c, errorLine(fmt.Sprintf("line longer than %d bytes; closing the connection", s.cfg.maxLine)))
			linger(c)
			return
		case err == nil || err == io.EOF: // at EOF, a last line without "\n"
			if strings.EqualFold(strings.TrimSpace(string(line)), "interactive") {
				interactive = true
				if !s.reply(c, "OK\n") {
					return
				}
				continue
			}
			answer, ok := s.execute(string(line))
			if ok && !s.reply(c, answer) {
				return
			}
			// Done with what the client sent, unless it asked to stay.
			if ok && !interactive && r.Buffered() == 0 {
				return
			}
		}
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if errors.Is(err, os.ErrDeadlineExceeded) && !closed {
				s.reply(c, errorLine(fmt.Sprintf("idle for %s; closing the connection", s.cfg.idle)))
			}
			return
		}
	}
}

// linger ends a connection the server gives up on while the client may
// still be sending: it half-closes, then reads and discards the client's
// input for a moment, so that the client reads the last answer and a clean
// end of stream rather than a reset.
func linger(c net.Conn) {
	if uc, ok := c.(*net.UnixConn); ok {
		uc.CloseWrite()
	}
	c.SetReadDeadline(time.Now().Add(time.Second))
	io.Copy(io.Discard, io.LimitReader(c, 4<<20))
}

// reply writes one answer; false when the client is gone or not reading.
func (s *Server) reply(c net.Conn, answer string) bool {
	if s.cfg.writeTimeout > 0 {
		c.SetWriteDeadline(time.Now().Add(s.cfg.writeTimeout))
	}
	_, err := io.WriteString(c, answer)
	return err == nil
}

// Send connects to the control socket at path, sends one command, half-closes
// the connection and returns the answer (everything the server writes until
// it closes), e.g. Send(path, "status json", 5*time.Second). An answer
// starting with "error: " is the server refusing the command; err reports
// only failures to talk to it.
func Send(path, command string, timeout time.Duration) (string, error) {
	c, err := net.DialTimeout("unix", path, timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if timeout > 0 {
		c.SetDeadline(time.Now().Add(timeout))
	}
	if _, err := io.WriteString(c, command+"\n"); err != nil {
		return "", err
	}
	if err := c.(*net.UnixConn).CloseWrite(); err != nil {
		return "", err
	}
	b, err := io.ReadAll(io.LimitReader(c, 16<<20))
	return string(b), err
}

// DefaultPath derives the socket path from the database (for PostgreSQL,
// "database.schema" or the like) and the table:
// os.TempDir()/osc.<database>.<table>.sock. Characters other than ASCII
// letters, digits, '_' and '-' become '_', and then a hash of the names is
// added so that different names never share a path; a path longer than 100
// bytes (unix socket paths are limited to 104 or 108) is shortened, keeping
// a readable prefix and the hash.
func DefaultPath(database, table string) string {
	const limit = 100
	db, lossy1 := sanitize(database)
	tb, lossy2 := sanitize(table)
	sum := sha256.Sum256([]byte(database + "\x00" + table))
	hash := hex.EncodeToString(sum[:5])
	base := "osc." + db + "." + tb
	name := base
	if lossy1 || lossy2 {
		name += "." + hash
	}
	dir := os.TempDir()
	if p := filepath.Join(dir, name+".sock"); len(p) <= limit {
		return p
	}
	suffix := "." + hash + ".sock"
	room := limit - len(filepath.Join(dir, "x")) + 1 - len(suffix)
	if room < len("osc.") && runtime.GOOS != "windows" {
		dir = "/tmp" // an unusably long TMPDIR
		room = limit - len(filepath.Join(dir, "x")) + 1 - len(suffix)
	}
	if room < 0 {
		room = 0
	}
	if len(base) > room {
		base = strings.TrimRight(base[:room], ".")
	}
	return filepath.Join(dir, base+suffix)
}

// sanitize keeps [A-Za-z0-9_-] and replaces the rest with '_'; lossy tells
// whether anything was replaced (or the name was empty).
func sanitize(s string) (string, bool) {
	if s == "" {
		return "_", true
	}
	lossy := false
	b := make([]byte, 0, len(s))
	for _, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '_', r == '-':
			b = append(b, byte(r))
		default:
			b = append(b, '_')
			lossy = true
		}
	}
	return string(b), lossy
}
