package control

import (
	"encoding/json"
	"fmt"
	"strings"

	"go.uber.org/zap"

	"github.com/osc-dev/osc/status"
)

// actions maps each action command (gh-ost's names and aliases) to the
// Handler action it performs.
var actions = map[string]string{
	"throttle": ActionThrottle, "pause": ActionThrottle, "suspend": ActionThrottle,
	"no-throttle": ActionNoThrottle, "unthrottle": ActionNoThrottle, "resume": ActionNoThrottle, "continue": ActionNoThrottle,
	"pause-all":  ActionPauseAll,
	"resume-all": ActionResumeAll,
	"unpostpone": ActionUnpostpone, "no-postpone": ActionUnpostpone, "cut-over": ActionUnpostpone,
	"abort": ActionAbort, "panic": ActionAbort,
}

// settings in the order status shows them.
var settings = []string{SettingChunkSize, SettingChunkTime, SettingMaxLagMillis, SettingMaxLoad, SettingCriticalLoad, SettingThrottleQuery}

func isSetting(name string) bool {
	for _, s := range settings {
		if s == name {
			return true
		}
	}
	return false
}

const helpText = `commands (one per line; names are case-insensitive):
  status, info                         progress, throttle state and settings, as text
  status json                          the status as one line of JSON
  sup                                  one line: state, percent, ETA, throttle reason
  throttle, pause, suspend             throttle the row copy (operator reason)
  no-throttle, unthrottle, resume, continue
                                       end the operator throttle
  pause-all                            stop both the row copy and the applying of changes
  resume-all                           end pause-all
  chunk-size=N                         rows per chunk, kept fixed (sets chunk-time to 0)
  chunk-time=D                         target time per chunk, the size adapts: a duration (500ms, 1s) or 0
  max-lag-millis=N                     throttle while the replication lag exceeds N ms
  max-load=NAME=N[,NAME=N...]          throttle while a load variable exceeds N (e.g. Threads_running=25); empty: none
  critical-load=NAME=N[,NAME=N...]     abort when a load variable exceeds N; empty: none
  throttle-query=SQL                   throttle while the query returns a value above 0; empty: none
  NAME=?                               print a setting's current value
  unpostpone, no-postpone, cut-over    let the postponed cut-over proceed
  abort, panic                         abort the migration
  interactive                          keep this connection open for more commands
  help                                 this list
a change or an action answers OK; a failure answers one line starting with "error: ".
the connection closes once the commands sent so far are answered, unless interactive.
`

// errorLine is the answer to a failed command: one line.
func errorLine(msg string) string {
	return "error: " + oneLine(msg) + "\n"
}

var lineBreaks = strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ")

// oneLine keeps a one-line answer on one line.
func oneLine(s string) string { return lineBreaks.Replace(s) }

// quote shows a piece of the client's input in an error, shortened.
func quote(s string) string {
	const max = 64
	if len(s) > max {
		s = s[:max] + "..."
	}
	return fmt.Sprintf("%q", s)
}

// execute runs one line and returns its answer; ok is false for an empty
// line, which gets none.
func (s *Server) execute(line string) (answer string, ok bool) {
	line = strings.TrimSpace(line) // also the "\n" and a "\r"
	if line == "" {
		return "", false
	}
	if name, value, isSet := strings.Cut(line, "="); isSet {
		name = strings.ToLower(strings.TrimSpace(name))
		value = strings.TrimSpace(value)
		s.log.Info("control command", zap.String("command", shorten(name)), zap.String("value", value))
		return s.setting(name, value), true
	}
	name, arg := line, ""
	if i := strings.IndexAny(line, " \t"); i >= 0 {
		name, arg = line[:i], strings.TrimSpace(line[i+1:])
	}
	name = strings.ToLower(name)
	if arg == "" {
		s.log.Info("control command", zap.String("command", shorten(name)))
	} else {
		s.log.Info("control command", zap.String("command", shorten(name)), zap.String("arg", shorten(arg)))
	}
	return s.command(name, arg), true
}

// shorten bounds what the log keeps of unparsed input.
func shorten(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

// setting answers NAME=VALUE and NAME=?.
func (s *Server) setting(name, value string) string {
	if !isSetting(name) {
		if _, ok := actions[name]; ok || name == "status" || name == "info" || name == "sup" || name == "help" {
			return errorLine(fmt.Sprintf("%s takes no value; try help", name))
		}
		return errorLine(fmt.Sprintf("unknown setting %s; try help", quote(name)))
	}
	if value == "?" {
		var v string
		err := s.guard("Get", func() (err error) {
			v, err = s.h.Get(name)
			return err
		})
		if err != nil {
			return errorLine(err.Error())
		}
		return oneLine(v) + "\n"
	}
	if err := s.guard("Set", func() error { return s.h.Set(name, value) }); err != nil {
		return errorLine(err.Error())
	}
	return "OK\n"
}

// command answers a line without '='.
func (s *Server) command(name, arg string) string {
	if action, ok := actions[name]; ok {
		if arg != "" {
			return errorLine(fmt.Sprintf("%s takes no argument", name))
		}
		if err := s.guard("Do", func() error { return s.h.Do(action) }); err != nil {
			return errorLine(err.Error())
		}
		return "OK\n"
	}
	switch name {
	case "help":
		if arg != "" {
			return errorLine("help takes no argument")
		}
		return helpText
	case "status", "info":
		switch strings.ToLower(arg) {
		case "":
			return s.statusText()
		case "json":
			return s.statusJSON()
		}
		return errorLine(fmt.Sprintf("unknown status format %s; use %s or %s json", quote(arg), name, name))
	case "sup":
		if arg != "" {
			return errorLine("sup takes no argument")
		}
		return s.sup()
	}
	if isSetting(name) {
		return errorLine(fmt.Sprintf("%s needs a value: %s=VALUE changes it, %s=? prints it", name, name, name))
	}
	return errorLine(fmt.Sprintf("unknown command %s; try help", quote(name)))
}

// statusText is the status line followed by the settings, one NAME=VALUE
// per line.
func (s *Server) statusText() string {
	snap, err := s.snapshot()
	if err != nil {
		return errorLine(err.Error())
	}
	var b strings.Builder
	b.WriteString(oneLine(snap.String()))
	b.WriteByte('\n')
	for _, name := range settings {
		var v string
		err := s.guard("Get", func() (err error) {
			v, err = s.h.Get(name)
			return err
		})
		if err != nil {
			fmt.Fprintf(&b, "%s=? (error: %s)\n", name, oneLine(err.Error()))
			continue
		}
		fmt.Fprintf(&b, "%s=%s\n", name, oneLine(v))
	}
	return b.String()
}

func (s *Server) statusJSON() string {
	snap, err := s.snapshot()
	if err != nil {
		return errorLine(err.Error())
	}
	j, err := json.Marshal(snap)
	if err != nil {
		return errorLine("status: " + err.Error())
	}
	return string(j) + "\n"
}

// sup is the short status: state, percent, ETA, throttle reason.
func (s *Server) sup() string {
	snap, err := s.snapshot()
	if err != nil {
		return errorLine(err.Error())
	}
	line := fmt.Sprintf("%s %.1f%%, ETA %s", snap.State, snap.Percent, snap.ETA)
	if snap.Throttle != "" {
		line += ", throttled: " + snap.Throttle
	} else {
		line += ", not throttled"
	}
	return oneLine(line) + "\n"
}

func (s *Server) snapshot() (snap status.Snapshot, err error) {
	err = s.guard("Status", func() error {
		snap = s.h.Status()
		return nil
	})
	return snap, err
}

// guard calls a Handler method, turning a panic into an error so that one
// bad call neither kills the process nor the connection.
func (s *Server) guard(method string, f func() error) (err error) {
	defer func() {
		if v := recover(); v != nil {
			s.log.Error("control handler panicked", zap.String("method", method), zap.Any("panic", v), zap.Stack("stack"))
			err = fmt.Errorf("internal error: %s panicked: %v", method, v)
		}
	}()
	return f()
}
