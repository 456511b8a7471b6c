package dpbench

import (
	"strings"
	"testing"
	"time"
)

func TestParseSteal(t *testing.T) {
	stat := "cpu  206532 0 88542 5657243 1129 0 18762 2338 0 0\ncpu0 101692 0 45768 2827224 257 0 12206 1027 0 0\n"
	got, err := parseSteal(strings.NewReader(stat))
	if err != nil || got != 23380*time.Millisecond {
		t.Errorf("parseSteal = %v, %v; want 23.38s", got, err)
	}
	if _, err := parseSteal(strings.NewReader("cpu0 1 2 3\nintr 5\n")); err == nil {
		t.Error("no cpu line: no error")
	}
	if _, err := stealClock(); err != nil {
		t.Errorf("this machine's /proc/stat: %v", err)
	}
	if s := newStealMeter(2).share(); s < 0 || s > 1 {
		t.Errorf("steal share %v over an instant", s)
	}
}
