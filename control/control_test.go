//go:build unix

package control

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"

	"github.com/osc-dev/osc/status"
)

// fakeHandler records every call; Set validates numbers the way a runner
// would, and panics on demand.
type fakeHandler struct {
	mu     sync.Mutex
	calls  []string
	values map[string]string
	snap   status.Snapshot
	panics map[string]bool // "Status", "Get", "Set", "Do:abort", ...
	block  chan struct{}   // when set, Do waits for it
}

func newFake() *fakeHandler {
	return &fakeHandler{
		values: map[string]string{
			SettingChunkSize: "1000", SettingChunkTime: "500ms", SettingMaxLagMillis: "1500",
			SettingMaxLoad: "Threads_running=25", SettingCriticalLoad: "", SettingThrottleQuery: "",
		},
		snap: status.Snapshot{State: "copying", RowsCopied: 420, RowsEstimate: 1000, Percent: 42,
			RowsPerSecond: 12.5, ETA: "46s", EventsApplied: 7, Backlog: 3, LagMillis: 120,
			Throttle: "operator", Elapsed: 33 * time.Second},
		panics: map[string]bool{},
	}
}

func (f *fakeHandler) record(call string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
}

func (f *fakeHandler) panicking(what string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.panics[what]
}

func (f *fakeHandler) setPanic(what string, on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.panics[what] = on
}

func (f *fakeHandler) takeCalls() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.calls
	f.calls = nil
	return c
}

func (f *fakeHandler) Status() status.Snapshot {
	if f.panicking("Status") {
		panic("status exploded")
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.snap
}

func (f *fakeHandler) Get(setting string) (string, error) {
	if f.panicking("Get") {
		panic("get exploded")
	}
	f.record("get " + setting)
	f.mu.Lock()
	defer f.mu.Unlock()
	v, ok := f.values[setting]
	if !ok {
		return "", fmt.Errorf("no setting %q", setting)
	}
	return v, nil
}

func (f *fakeHandler) Set(setting, value string) error {
	if f.panicking("Set") {
		panic("set exploded")
	}
	f.record("set " + setting + "=" + value)
	switch setting {
	case SettingChunkSize, SettingMaxLagMillis:
		if n, err := strconv.Atoi(value); err != nil || n <= 0 {
			return fmt.Errorf("%s=%s: want a positive integer", setting, value)
		}
	case SettingChunkTime:
		if _, err := time.ParseDuration(value); err != nil {
			return fmt.Errorf("%s=%s: want a duration such as 500ms", setting, value)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.values[setting] = value
	return nil
}

func (f *fakeHandler) Do(action string) error {
	if f.panicking("Do:" + action) {
		panic("do " + action + " exploded")
	}
	f.record("do " + action)
	f.mu.Lock()
	block := f.block
	f.mu.Unlock()
	if block != nil {
		<-block
	}
	if action == ActionUnpostpone {
		return errors.New("cut-over is not postponed")
	}
	return nil
}

// sockPath is a socket path in a fresh directory, short enough for bind.
func sockPath(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "c.sock")
	if len(p) > 90 {
		dir, err := os.MkdirTemp("/tmp", "osct")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		p = filepath.Join(dir, "c.sock")
	}
	return p
}

func start(t *testing.T, h Handler) (*Server, string) {
	t.Helper()
	return startWith(t, h, defaultConfig, zaptest.NewLogger(t))
}

func startWith(t *testing.T, h Handler, cfg config, log *zap.Logger) (*Server, string) {
	t.Helper()
	p := sockPath(t)
	s, err := listen(p, h, log, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, p
}

func send(t *testing.T, path, command string) string {
	t.Helper()
	a, err := Send(path, command, 5*time.Second)
	if err != nil {
		t.Fatalf("send %q: %v", command, err)
	}
	return a
}

// dial opens a connection.
func dial(t *testing.T, path string) (*net.UnixConn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c.(*net.UnixConn), bufio.NewReader(c)
}

// dialInteractive opens a connection that stays open between commands.
func dialInteractive(t *testing.T, path string) (*net.UnixConn, *bufio.Reader) {
	t.Helper()
	c, r := dial(t, path)
	io.WriteString(c, "interactive\n")
	if got, err := r.ReadString('\n'); err != nil || got != "OK\n" {
		t.Fatalf("interactive: %q, %v", got, err)
	}
	return c, r
}

func TestCommands(t *testing.T) {
	f := newFake()
	_, p := start(t, f)
	cases := []struct {
		line, answer string
		calls        []string
	}{
		{"throttle", "OK\n", []string{"do throttle"}},
		{"pause", "OK\n", []string{"do throttle"}},
		{"suspend", "OK\n", []string{"do throttle"}},
		{"no-throttle", "OK\n", []string{"do no-throttle"}},
		{"unthrottle", "OK\n", []string{"do no-throttle"}},
		{"resume", "OK\n", []string{"do no-throttle"}},
		{"continue", "OK\n", []string{"do no-throttle"}},
		{"pause-all", "OK\n", []string{"do pause-all"}},
		{"resume-all", "OK\n", []string{"do resume-all"}},
		{"unpostpone", "error: cut-over is not postponed\n", []string{"do unpostpone"}},
		{"cut-over", "error: cut-over is not postponed\n", []string{"do unpostpone"}},
		{"no-postpone", "error: cut-over is not postponed\n", []string{"do unpostpone"}},
		{"abort", "OK\n", []string{"do abort"}},
		{"panic", "OK\n", []string{"do abort"}},
		// Case, whitespace, "\r".
		{"  THROTTLE \r", "OK\n", []string{"do throttle"}},
		{"No-Throttle", "OK\n", []string{"do no-throttle"}},
		// Settings.
		{"chunk-size=500", "OK\n", []string{"set chunk-size=500"}},
		{"Chunk-Size = 600 ", "OK\n", []string{"set chunk-size=600"}},
		{"chunk-size=?", "600\n", []string{"get chunk-size"}},
		{"chunk-time=100ms", "OK\n", []string{"set chunk-time=100ms"}},
		{"chunk-time=?", "100ms\n", []string{"get chunk-time"}},
		{"max-lag-millis=2000", "OK\n", []string{"set max-lag-millis=2000"}},
		{"max-lag-millis=?", "2000\n", []string{"get max-lag-millis"}},
		{"max-load=Threads_running=25,Threads_connected=500", "OK\n", []string{"set max-load=Threads_running=25,Threads_connected=500"}},
		{"max-load=?", "Threads_running=25,Threads_connected=500\n", []string{"get max-load"}},
		{"critical-load=Threads_running=200", "OK\n", []string{"set critical-load=Threads_running=200"}},
		{"critical-load=?", "Threads_running=200\n", []string{"get critical-load"}},
		{"throttle-query=SELECT COUNT(*) > 0 FROM t WHERE a = 1 AND b='x y'", "OK\n",
			[]string{"set throttle-query=SELECT COUNT(*) > 0 FROM t WHERE a = 1 AND b='x y'"}},
		{"throttle-query=?", "SELECT COUNT(*) > 0 FROM t WHERE a = 1 AND b='x y'\n", []string{"get throttle-query"}},
		{"throttle-query=", "OK\n", []string{"set throttle-query="}},
		{"throttle-query=?", "\n", []string{"get throttle-query"}},
		// Bad values: the Handler's error, one line.
		{"chunk-size=abc", "error: chunk-size=abc: want a positive integer\n", []string{"set chunk-size=abc"}},
		{"chunk-time=fast", "error: chunk-time=fast: want a duration such as 500ms\n", []string{"set chunk-time=fast"}},
		// Refused before reaching the Handler.
		{"foo", "error: unknown command \"foo\"; try help\n", nil},
		{"foo=1", "error: unknown setting \"foo\"; try help\n", nil},
		{"foo=?", "error: unknown setting \"foo\"; try help\n", nil},
		{"throttle=1", "error: throttle takes no value; try help\n", nil},
		{"panic=mytable", "error: panic takes no value; try help\n", nil},
		{"abort now", "error: abort takes no argument\n", nil},
		{"chunk-size", "error: chunk-size needs a value: chunk-size=VALUE changes it, chunk-size=? prints it\n", nil},
		{"status xml", "error: unknown status format \"xml\"; use status or status json\n", nil},
		{"sup x", "error: sup takes no argument\n", nil},
		{"help me", "error: help takes no argument\n", nil},
	}
	for _, c := range cases {
		got := send(t, p, c.line)
		if got != c.answer {
			t.Errorf("%q: answer %q, want %q", c.line, got, c.answer)
		}
		calls := f.takeCalls()
		if fmt.Sprint(calls) != fmt.Sprint(c.calls) {
			t.Errorf("%q: calls %q, want %q", c.line, calls, c.calls)
		}
	}
}

func TestHelp(t *testing.T) {
	_, p := start(t, newFake())
	got := send(t, p, "HELP")
	if got != helpText {
		t.Fatalf("help: %q", got)
	}
	// Every action and setting is listed.
	for name := range actions {
		if !strings.Contains(got, name) {
			t.Errorf("help does not mention %s", name)
		}
	}
	for _, name := range settings {
		if !strings.Contains(got, name+"=") {
			t.Errorf("help does not mention %s=", name)
		}
	}
}

func TestStatus(t *testing.T) {
	f := newFake()
	_, p := start(t, f)

	text := send(t, p, "status")
	want := f.snap.String() + "\n" +
		"chunk-size=1000\nchunk-time=500ms\nmax-lag-millis=1500\nmax-load=Threads_running=25\ncritical-load=\nthrottle-query=\n"
	if text != want {
		t.Errorf("status:\n%s\nwant:\n%s", text, want)
	}
	if got := send(t, p, "info"); got != want {
		t.Errorf("info: %q", got)
	}

	for _, cmd := range []string{"status json", "STATUS  Json", "info json"} {
		j := send(t, p, cmd)
		if strings.Count(j, "\n") != 1 || !strings.HasSuffix(j, "\n") {
			t.Errorf("%s: not one line: %q", cmd, j)
		}
		var back status.Snapshot
		if err := json.Unmarshal([]byte(j), &back); err != nil {
			t.Fatalf("%s: %v: %q", cmd, err, j)
		}
		if back != f.snap {
			t.Errorf("%s: parsed back %+v, want %+v", cmd, back, f.snap)
		}
	}

	if got, want := send(t, p, "sup"), "copying 42.0%, ETA 46s, throttled: operator\n"; got != want {
		t.Errorf("sup: %q, want %q", got, want)
	}
	f.mu.Lock()
	f.snap.Throttle = ""
	f.mu.Unlock()
	if got, want := send(t, p, "sup"), "copying 42.0%, ETA 46s, not throttled\n"; got != want {
		t.Errorf("sup: %q, want %q", got, want)
	}

	// A setting that cannot be read does not spoil the status.
	f.mu.Lock()
	delete(f.values, SettingCriticalLoad)
	f.mu.Unlock()
	if got := send(t, p, "status"); !strings.Contains(got, "critical-load=? (error: no setting \"critical-load\")\n") ||
		!strings.Contains(got, "throttle-query=\n") {
		t.Errorf("status with a failing Get: %q", got)
	}
}

func TestHandlerPanic(t *testing.T) {
	f := newFake()
	core, logs := observer.New(zapcore.InfoLevel)
	_, p := startWith(t, f, defaultConfig, zap.New(core))
	c, r := dialInteractive(t, p)

	ask := func(line string) string {
		t.Helper()
		if _, err := io.WriteString(c, line+"\n"); err != nil {
			t.Fatal(err)
		}
		a, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		return a
	}
	f.setPanic("Do:abort", true)
	if got, want := ask("abort"), "error: internal error: Do panicked: do abort exploded\n"; got != want {
		t.Errorf("panicking Do: %q, want %q", got, want)
	}
	// Same connection still served.
	if got := ask("throttle"); got != "OK\n" {
		t.Errorf("after panic: %q", got)
	}
	f.setPanic("Set", true)
	if got := ask("chunk-size=5"); !strings.HasPrefix(got, "error: internal error: Set panicked") {
		t.Errorf("panicking Set: %q", got)
	}
	f.setPanic("Get", true)
	if got := ask("chunk-size=?"); !strings.HasPrefix(got, "error: internal error: Get panicked") {
		t.Errorf("panicking Get: %q", got)
	}
	f.setPanic("Status", true)
	for _, cmd := range []string{"status", "status json", "sup"} {
		if got := ask(cmd); got != "error: internal error: Status panicked: status exploded\n" {
			t.Errorf("panicking Status, %s: %q", cmd, got)
		}
	}
	// Other connections too.
	f.setPanic("Status", false)
	if got := send(t, p, "sup"); !strings.HasPrefix(got, "copying") {
		t.Errorf("new connection after panics: %q", got)
	}
	if n := logs.FilterMessage("control handler panicked").Len(); n != 6 {
		t.Errorf("%d panics logged, want 6", n)
	}
}

func TestLogsCommands(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	_, p := startWith(t, newFake(), defaultConfig, zap.New(core))
	send(t, p, "Throttle")
	send(t, p, "throttle-query=SELECT 1")
	send(t, p, "status json")
	send(t, p, "")
	var got []string
	for _, e := range logs.FilterMessage("control command").All() {
		if e.Level != zapcore.InfoLevel {
			t.Errorf("logged at %s", e.Level)
		}
		s := e.ContextMap()["command"].(string)
		if v, ok := e.ContextMap()["value"]; ok {
			s += "=" + v.(string)
		}
		if a, ok := e.ContextMap()["arg"]; ok {
			s += " " + a.(string)
		}
		got = append(got, s)
	}
	if want := []string{"throttle", "throttle-query=SELECT 1", "status json"}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("logged %q, want %q", got, want)
	}
}

func TestInteractive(t *testing.T) {
	f := newFake()
	_, p := start(t, f)
	c, r := dial(t, p)
	// Empty lines get no answer; several commands in one write are all answered.
	if _, err := io.WriteString(c, "interactive\n\n  \r\nthrottle\n\nchunk-size=7\r\nchunk-size=?\n"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"OK\n", "OK\n", "OK\n", "7\n"} {
		if got, err := r.ReadString('\n'); err != nil || got != want {
			t.Fatalf("got %q, %v; want %q", got, err, want)
		}
	}
	// The connection stays open for the next command.
	time.Sleep(50 * time.Millisecond)
	if _, err := io.WriteString(c, "sup\n"); err != nil {
		t.Fatal(err)
	}
	if got, _ := r.ReadString('\n'); !strings.HasPrefix(got, "copying 42.0%") {
		t.Fatalf("sup: %q", got)
	}
	// Half-close: the server closes after answering what it has.
	io.WriteString(c, "no-throttle")
	c.CloseWrite()
	rest, err := io.ReadAll(r)
	if err != nil || string(rest) != "OK\n" {
		t.Fatalf("after half-close: %q, %v", rest, err)
	}
	if calls := f.takeCalls(); fmt.Sprint(calls) != fmt.Sprint([]string{"do throttle", "set chunk-size=7", "get chunk-size", "do no-throttle"}) {
		t.Errorf("calls %q", calls)
	}
}

// TestOneShot is `echo status | nc -U sock` with a netcat that does not
// half-close: the server closes after answering.
func TestOneShot(t *testing.T) {
	_, p := start(t, newFake())
	c, r := dial(t, p)
	io.WriteString(c, "sup\n")
	out, err := io.ReadAll(r)
	if err != nil || !strings.HasPrefix(string(out), "copying 42.0%") {
		t.Fatalf("one-shot: %q, %v", out, err)
	}
}

// TestNetcatStyle is `echo status | nc -U sock`: write, half-close, read to EOF.
func TestNetcatStyle(t *testing.T) {
	_, p := start(t, newFake())
	for _, in := range []string{"status\n", "status", "status\r\n", "throttle\nsup\n"} {
		c, err := net.Dial("unix", p)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, in)
		c.(*net.UnixConn).CloseWrite()
		out, err := io.ReadAll(c)
		c.Close()
		if err != nil {
			t.Fatalf("%q: %v", in, err)
		}
		switch in {
		case "throttle\nsup\n":
			if !strings.HasPrefix(string(out), "OK\ncopying") || strings.Count(string(out), "\n") != 2 {
				t.Errorf("%q: %q", in, out)
			}
		default:
			if !strings.HasPrefix(string(out), "copying: copied 420/1000") || !strings.HasSuffix(string(out), "throttle-query=\n") {
				t.Errorf("%q: %q", in, out)
			}
		}
	}
}

// TestSocat runs the real thing when socat is installed.
func TestSocat(t *testing.T) {
	socat, err := exec.LookPath("socat")
	if err != nil {
		t.Skip("no socat")
	}
	_, p := start(t, newFake())
	cmd := exec.Command(socat, "-", "UNIX-CONNECT:"+p)
	cmd.Stdin = strings.NewReader("status json\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	var back status.Snapshot
	if err := json.Unmarshal(out, &back); err != nil || back.State != "copying" {
		t.Fatalf("socat: %q: %v", out, err)
	}
}

func TestSocketMode(t *testing.T) {
	old := syscall.Umask(0) // the most permissive umask must not matter
	defer syscall.Umask(old)
	_, p := start(t, newFake())
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&fs.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %s, want a socket with 0600", fi.Mode())
	}
	// Nothing left behind next to it.
	entries, _ := os.ReadDir(filepath.Dir(p))
	if len(entries) != 1 {
		t.Errorf("directory holds %d entries, want only the socket", len(entries))
	}
}

func TestSecondListenRefused(t *testing.T) {
	_, p := start(t, newFake())
	s2, err := Listen(p, newFake(), nil)
	if err == nil {
		s2.Close()
		t.Fatal("second Listen on a live socket succeeded")
	}
	if !strings.Contains(err.Error(), "another osc is running on "+p+"?") {
		t.Errorf("error %q does not name the path", err)
	}
	// The first server is untouched.
	if got := send(t, p, "throttle"); got != "OK\n" {
		t.Errorf("first server after refused Listen: %q", got)
	}
}

func TestStaleSocketReplaced(t *testing.T) {
	p := sockPath(t)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: p, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Lstat(p); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}
	s, err := Listen(p, newFake(), zaptest.NewLogger(t))
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	defer s.Close()
	if got := send(t, p, "throttle"); got != "OK\n" {
		t.Errorf("answer %q", got)
	}
}

func TestNotASocketRefused(t *testing.T) {
	dir := filepath.Dir(sockPath(t))
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("keep me"), 0o644)
	sub := filepath.Join(dir, "dir")
	os.Mkdir(sub, 0o755)
	link := filepath.Join(dir, "link")
	os.Symlink(file, link)
	for _, p := range []string{file, sub, link} {
		s, err := Listen(p, newFake(), nil)
		if err == nil {
			s.Close()
			t.Errorf("Listen on %s succeeded", p)
			continue
		}
		if !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), "not a socket") {
			t.Errorf("Listen on %s: %v", p, err)
		}
	}
	if b, _ := os.ReadFile(file); string(b) != "keep me" {
		t.Errorf("file changed: %q", b)
	}
}

func TestListenErrors(t *testing.T) {
	if _, err := Listen("", newFake(), nil); err == nil {
		t.Error("empty path accepted")
	}
	if _, err := Listen(sockPath(t), nil, nil); err == nil {
		t.Error("nil handler accepted")
	}
	missing := filepath.Join(filepath.Dir(sockPath(t)), "missing", "c.sock")
	if _, err := Listen(missing, newFake(), nil); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing directory: %v", err)
	}
	long := "/tmp/" + strings.Repeat("x", 120) + ".sock"
	if _, err := Listen(long, newFake(), nil); err == nil || !strings.Contains(err.Error(), "too long") &&
		!strings.Contains(err.Error(), "longer") {
		t.Errorf("long path: %v", err)
	}
}

func TestClose(t *testing.T) {
	f := newFake()
	s, p := start(t, f)
	c, r := dial(t, p)
	io.WriteString(c, "throttle\n")
	if got, _ := r.ReadString('\n'); got != "OK\n" {
		t.Fatalf("answer %q", got)
	}
	// A command in progress is waited for, and answered: an abort makes
	// the run close the server while the abort is still being answered.
	// An idle interactive client gets a clean end of stream.
	_, idleR := dialInteractive(t, p)
	block := make(chan struct{})
	f.mu.Lock()
	f.block = block
	f.mu.Unlock()
	f.takeCalls()
	c2, r2 := dial(t, p)
	io.WriteString(c2, "pause-all\n")
	for len(f.takeCalls()) == 0 {
		time.Sleep(time.Millisecond)
	}
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	select {
	case <-closed:
		t.Fatal("Close returned while a command was in progress")
	case <-time.After(50 * time.Millisecond):
	}
	close(block)
	if got, err := r2.ReadString('\n'); err != nil || got != "OK\n" {
		t.Errorf("the answer of the command in progress while the server closed: %q, %v", got, err)
	}
	if rest, err := io.ReadAll(idleR); err != nil || len(rest) != 0 {
		t.Errorf("the idle client after Close: %q, %v; want a clean end of stream", rest, err)
	}
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := r.ReadString('\n'); err != io.EOF {
		t.Errorf("client read after Close: %v, want EOF", err)
	}
	if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket file after Close: %v", err)
	}
	if _, err := net.Dial("unix", p); err == nil {
		t.Error("dial after Close succeeded")
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

// TestCloseKeepsOthersFile: Close removes only the socket it created.
func TestCloseKeepsOthersFile(t *testing.T) {
	s, p := start(t, newFake())
	os.Remove(p)
	os.WriteFile(p, []byte("someone else's"), 0o600)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(p); err != nil || string(b) != "someone else's" {
		t.Errorf("file after Close: %q, %v", b, err)
	}
}

func TestConcurrentClients(t *testing.T) {
	f := newFake()
	_, p := start(t, f)
	const clients, each = 20, 25
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for i := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("unix", p)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(20 * time.Second))
			r := bufio.NewReader(c)
			io.WriteString(c, "interactive\n")
			if a, err := r.ReadString('\n'); err != nil || a != "OK\n" {
				errs <- fmt.Errorf("client %d interactive: %q, %v", i, a, err)
				return
			}
			for j := range each {
				n := strconv.Itoa(i*1000 + j + 1)
				for _, q := range [][2]string{{"chunk-size=" + n, "OK\n"}, {"throttle", "OK\n"}, {"status json", "{"}} {
					if _, err := io.WriteString(c, q[0]+"\n"); err != nil {
						errs <- err
						return
					}
					a, err := r.ReadString('\n')
					if err != nil || !strings.HasPrefix(a, q[1]) {
						errs <- fmt.Errorf("client %d %q: %q, %v", i, q[0], a, err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := len(f.takeCalls()); n != clients*each*2 {
		t.Errorf("%d calls, want %d", n, clients*each*2)
	}
}

func TestLongLine(t *testing.T) {
	core, logs := observer.New(zapcore.InfoLevel)
	_, p := startWith(t, newFake(), defaultConfig, zap.New(core))
	// Just under the limit: answered (as an unknown setting, shortened).
	c, r := dial(t, p)
	io.WriteString(c, "x="+strings.Repeat("a", defaultConfig.maxLine-3)+"\n")
	if got, _ := r.ReadString('\n'); got != "error: unknown setting \"x\"; try help\n" {
		t.Errorf("line at the limit: %q", got)
	}
	c.Close()

	c, r = dial(t, p)
	go func() {
		io.WriteString(c, "status "+strings.Repeat("a", 200<<10)+"\n") // fails once the server closes
	}()
	got, _ := r.ReadString('\n')
	if want := fmt.Sprintf("error: line longer than %d bytes; closing the connection\n", defaultConfig.maxLine); got != want {
		t.Errorf("long line: %q, want %q", got, want)
	}
	if rest, err := io.ReadAll(r); err != nil || len(rest) != 0 {
		t.Errorf("after a long line: %q, %v; want a clean end of stream", rest, err)
	}
	// The server goes on.
	if got := send(t, p, "throttle"); got != "OK\n" {
		t.Errorf("after a long line: %q", got)
	}
	if logs.FilterMessage("control command rejected: line too long").Len() != 1 {
		t.Error("long line not logged")
	}
	// Unknown input is quoted shortened.
	if got := send(t, p, strings.Repeat("z", 1000)); len(got) > 200 || !strings.HasPrefix(got, "error: unknown command \"zzz") {
		t.Errorf("long unknown command: %q", got)
	}
}

func TestIdleTimeout(t *testing.T) {
	cfg := defaultConfig
	cfg.idle = 100 * time.Millisecond
	_, p := startWith(t, newFake(), cfg, zaptest.NewLogger(t))
	c, r := dial(t, p)
	io.WriteString(c, "interactive\n")
	if got, _ := r.ReadString('\n'); got != "OK\n" {
		t.Fatalf("interactive: %q", got)
	}
	// Activity keeps it open.
	for range 3 {
		time.Sleep(60 * time.Millisecond)
		io.WriteString(c, "throttle\n")
		if got, _ := r.ReadString('\n'); got != "OK\n" {
			t.Fatalf("answer %q", got)
		}
	}
	start := time.Now()
	got, _ := r.ReadString('\n')
	if got != "error: idle for 100ms; closing the connection\n" {
		t.Errorf("idle: %q", got)
	}
	if _, err := r.ReadString('\n'); err != io.EOF {
		t.Errorf("after idle: %v, want EOF", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("closed after %s", d)
	}
}

func TestTooManyConnections(t *testing.T) {
	cfg := defaultConfig
	cfg.maxConns = 2
	_, p := startWith(t, newFake(), cfg, zaptest.NewLogger(t))
	var conns []*net.UnixConn
	for range 2 {
		c, r := dialInteractive(t, p)
		io.WriteString(c, "throttle\n") // make sure it is being served
		if got, _ := r.ReadString('\n'); got != "OK\n" {
			t.Fatalf("answer %q", got)
		}
		conns = append(conns, c)
	}
	if got := send(t, p, "status"); got != "error: too many control connections (limit 2); try again later\n" {
		t.Errorf("third connection: %q", got)
	}
	conns[0].Close()
	// The slot frees once the server notices the close.
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := send(t, p, "throttle")
		if got == "OK\n" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("slot never freed: %q", got)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestDefaultPath(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	if got, want := DefaultPath("shop", "orders"), filepath.Join(tmp, "osc.shop.orders.sock"); got != want {
		t.Errorf("plain: %q, want %q", got, want)
	}
	// Unsafe characters: replaced, and a hash keeps names apart.
	seen := map[string]string{}
	for _, n := range [][2]string{
		{"my_db", "t"}, {"my-db", "t"}, {"my.db", "t"}, {"my/db", "t"}, {"my db", "t"}, {"my", "db.t"}, {"my.db.t", ""},
		{"app.public", "users"}, {"app", "public.users"}, {"app", "Ünïcode"}, {"../..", "x"}, {"", ""},
	} {
		p := DefaultPath(n[0], n[1])
		base := filepath.Base(p)
		if filepath.Dir(p) != tmp {
			t.Errorf("%q: %q not in %s", n, p, tmp)
		}
		for _, r := range strings.TrimSuffix(base, ".sock") {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-' || r == '.') {
				t.Errorf("%q: unsafe %q in %q", n, r, base)
			}
		}
		if prev, dup := seen[p]; dup {
			t.Errorf("%q and %s share %s", n, prev, p)
		}
		seen[p] = fmt.Sprint(n)
	}
	if p := DefaultPath("app.public", "users"); !strings.HasPrefix(filepath.Base(p), "osc.app_public.users.") {
		t.Errorf("schema-qualified: %q", p)
	}

	// Long names: shortened under the limit, still distinct, still listenable.
	long := strings.Repeat("t", 64)
	p1, p2 := DefaultPath(strings.Repeat("d", 64), long+"1"), DefaultPath(strings.Repeat("d", 64), long+"2")
	if len(p1) > 100 || len(p2) > 100 || p1 == p2 || !strings.HasPrefix(filepath.Base(p1), "osc.ddd") {
		t.Errorf("long: %q (%d), %q", p1, len(p1), p2)
	}
	if DefaultPath(strings.Repeat("d", 64), long+"1") != p1 {
		t.Error("not deterministic")
	}
	s, err := Listen(p1, newFake(), nil)
	if err != nil {
		t.Fatalf("Listen(DefaultPath) with long names: %v", err)
	}
	s.Close()

	// An unusably long TMPDIR: fall back to /tmp.
	t.Setenv("TMPDIR", "/"+strings.Repeat("x", 120))
	if p := DefaultPath("shop", "orders"); len(p) > 100 || filepath.Dir(p) != "/tmp" {
		t.Errorf("long TMPDIR: %q", p)
	}
}
