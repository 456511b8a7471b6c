package testenv_test

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ztnet/zt/internal/testenv"
)

// fatalTB records Fatalf instead of failing the real test.
type fatalTB struct {
	*testing.T
	msg string
}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	runtime.Goexit()
}

func (f *fatalTB) Fatal(args ...any) { f.Fatalf("%s", fmt.Sprint(args...)) }

// startFailure runs StartAPIServer and returns its Fatalf message.
func startFailure(t *testing.T, opts ...testenv.Option) string {
	f := &fatalTB{T: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		testenv.StartAPIServer(f, opts...)
	}()
	<-done
	if f.msg == "" {
		t.Fatal("StartAPIServer succeeded, want a failure")
	}
	return f.msg
}

func TestMissingBinariesFail(t *testing.T) {
	t.Setenv(testenv.EnvBinDir, t.TempDir())
	msg := startFailure(t)
	if !strings.Contains(msg, "hack/k8s-bins.sh") {
		t.Errorf("message does not say how to build the binaries: %s", msg)
	}
}

func TestStartFailureShowsLogs(t *testing.T) {
	t.Parallel()
	msg := startFailure(t, testenv.WithAPIServerArgs("--no-such-flag=1"))
	if !strings.Contains(msg, "exited early") || !strings.Contains(msg, "unknown flag: --no-such-flag") {
		t.Errorf("message lacks the exit and the apiserver log tail:\n%s", msg)
	}
	t.Logf("failure message:\n%s", msg)
}

func TestStartTimeout(t *testing.T) {
	t.Parallel()
	msg := startFailure(t, testenv.WithStartTimeout(300*time.Millisecond))
	if !strings.Contains(msg, "not ready before the start timeout") {
		t.Errorf("message does not name the timeout:\n%s", msg)
	}
}
