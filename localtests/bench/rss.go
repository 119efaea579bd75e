package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

// rssWatch samples a child's VmHWM, the peak RSS of its own address
// space, until stopped. getrusage's ru_maxrss would overstate it: Go
// starts children with CLONE_VM, and the kernel carries the parent's (this
// benchmark's) RSS at exec time into the child's ru_maxrss. VmHWM only
// grows, so the last sample before exit misses at most the growth of one
// interval.
type rssWatch struct {
	kb   atomic.Int64
	stop chan struct{}
	done chan struct{}
}

func watchRSS(pid int) *rssWatch {
	w := &rssWatch{stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			if kb := vmHWM(pid); kb > w.kb.Load() {
				w.kb.Store(kb)
			}
			select {
			case <-w.stop:
				return
			case <-t.C:
			}
		}
	}()
	return w
}

// peakKB stops sampling and returns the highest VmHWM seen (0: none).
func (w *rssWatch) peakKB() int64 {
	select {
	case <-w.stop:
	default:
		close(w.stop)
	}
	<-w.done
	return w.kb.Load()
}

func vmHWM(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(s.Text(), "VmHWM:"); ok {
			var kb int64
			fmt.Sscanf(strings.TrimSpace(rest), "%d", &kb)
			return kb
		}
	}
	return 0
}
