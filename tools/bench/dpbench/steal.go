package dpbench

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"
)

// A virtual machine's CPUs can be taken away by the hypervisor (steal
// time): a sample measured meanwhile is the machine's stall, not the
// configuration's cost, and stalls of a few seconds span several
// configurations of one repetition. Every sample therefore records the
// share of the machine's CPU time stolen while it ran; one above
// maxSteal is measured again, at most stealRetries times, and the
// figures the report keeps say how much was stolen and how many
// samples were measured again.
const (
	maxSteal     = 0.01
	stealRetries = 2
	clockTicks   = 100 // USER_HZ: /proc/stat counts in 1/100 s on Linux
)

// stealClock reads the steal column of /proc/stat's "cpu" line (all CPUs).
func stealClock() (time.Duration, error) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return parseSteal(f)
}

func parseSteal(r io.Reader) (time.Duration, error) {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 9 || fields[0] != "cpu" {
			continue
		}
		ticks, err := strconv.ParseUint(fields[8], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/stat steal %q: %w", fields[8], err)
		}
		return time.Duration(ticks) * time.Second / clockTicks, nil
	}
	if err := sc.Err(); err != nil {
		return 0, err
	}
	return 0, fmt.Errorf("/proc/stat: no cpu line with a steal column")
}

// stealMeter measures the stolen share of the machine's CPU time over
// an interval.
type stealMeter struct {
	cpus        int
	start       time.Time
	stolen0     time.Duration
	unavailable bool
}

func newStealMeter(cpus int) *stealMeter {
	m := &stealMeter{cpus: max(cpus, 1), start: time.Now()}
	var err error
	m.stolen0, err = stealClock()
	m.unavailable = err != nil
	return m
}

// share returns the stolen share since newStealMeter (0 when the kernel
// does not report steal).
func (m *stealMeter) share() float64 {
	if m.unavailable {
		return 0
	}
	now, err := stealClock()
	wall := time.Since(m.start)
	if err != nil || wall <= 0 {
		return 0
	}
	return float64(now-m.stolen0) / float64(wall) / float64(m.cpus)
}
