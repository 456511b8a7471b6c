package flows

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// serveUnix serves h on a unix socket in a temporary directory.
func serveUnix(t *testing.T, h http.Handler) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "flows.sock")
	ls, err := Listen(sock, "")
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(h)
	srv.Listener = ls[0]
	srv.Start()
	t.Cleanup(srv.Close)
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v %v, want 0600", fi.Mode(), err)
	}
	return sock
}

func TestAPI(t *testing.T) {
	st := must[*Store](t)(OpenStore(StoreOptions{RingSize: 64}))
	t0 := time.Now().Add(-time.Minute)
	for i := range 10 {
		st.Append(rec(t0, i))
	}
	h := NewHandler(ServerOptions{Store: st, Version: Version{Agent: "v0.1.0-test", Node: "n1"},
		Counters: func() ([]Counter, error) {
			return []Counter{{Direction: "ingress", Verdict: "drop", Reason: "policy-denied", Packets: 10, Bytes: 600}}, nil
		}})
	c := NewSocketClient(serveUnix(t, h))
	ctx := context.Background()

	v, err := c.Version(ctx)
	if err != nil || v.API != APIVersion || v.Agent != "v0.1.0-test" || CheckVersion(v) != nil {
		t.Errorf("version %+v %v", v, err)
	}
	if err := CheckVersion(Version{API: 99, Agent: "v9"}); err == nil || !strings.Contains(err.Error(), "version skew") {
		t.Errorf("skew: %v", err)
	}
	cs, err := c.Counters(ctx)
	if err != nil || len(cs) != 1 || cs[0].Packets != 10 {
		t.Errorf("counters %+v %v", cs, err)
	}

	// JSON array (plain GET) and NDJSON (client) agree.
	hs := httptest.NewServer(h)
	defer hs.Close()
	resp, err := http.Get(hs.URL + "/v1/flows?last=3&verdict=dropped")
	if err != nil {
		t.Fatal(err)
	}
	var arr []Record
	if err := json.NewDecoder(resp.Body).Decode(&arr); err != nil || resp.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("array: %v %s", err, resp.Header.Get("Content-Type"))
	}
	resp.Body.Close()
	if len(arr) != 3 || arr[0].Seq != 8 || arr[2].Seq != 10 || arr[0].Src.Pod != "web" {
		t.Errorf("array %+v", arr)
	}
	resp, _ = http.Get(hs.URL + "/v1/flows?verdict=bogus")
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("bad filter: %s", resp.Status)
	}
	resp.Body.Close()
	var n int
	if err := c.Query(ctx, Filter{Namespace: "data"}, func(*Record) error { n++; return nil }); err != nil || n != 10 {
		t.Errorf("query: %d records, %v", n, err)
	}
	err = c.Query(ctx, Filter{Verdict: "bogus"}, func(*Record) error { return nil })
	if err == nil || !strings.Contains(err.Error(), "400") {
		t.Errorf("bad filter over the client: %v", err)
	}

	t.Run("follow sees records appended after it connected", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		got := make(chan Record, 100)
		done := make(chan error, 1)
		go func() {
			done <- c.Query(ctx, Filter{Last: 2, Follow: true, Port: 5432}, func(r *Record) error {
				got <- *r
				return nil
			})
		}()
		for want := uint64(9); want <= 10; want++ {
			if r := <-got; r.Seq != want {
				t.Fatalf("backlog: seq %d, want %d", r.Seq, want)
			}
		}
		// Appended after the follower connected (it has drained the
		// backlog above, so it is subscribed); one that does not match.
		other := rec(t0, 11)
		other.Dst.Port = 80
		st.Append(other)
		st.Append(rec(t0, 12))
		select {
		case r := <-got:
			if r.Seq != 12 {
				t.Errorf("followed seq %d, want 12", r.Seq)
			}
		case <-ctx.Done():
			t.Fatal("follower saw nothing")
		}
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
			t.Errorf("follow ended with %v", err)
		}
		// The server lets go of the follower once the client is gone.
		deadline := time.Now().Add(5 * time.Second)
		for {
			st.mu.Lock()
			subs := len(st.subs)
			st.mu.Unlock()
			if subs == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d subscriptions left after the client went away", subs)
			}
			st.Append(rec(t0, 13)) // a write notices the closed connection
			time.Sleep(20 * time.Millisecond)
		}
	})

	t.Run("unreachable", func(t *testing.T) {
		c := NewSocketClient(filepath.Join(t.TempDir(), "none.sock"))
		_, err := c.Version(ctx)
		if !errors.Is(err, ErrUnreachable) {
			t.Errorf("missing socket: %v", err)
		}
	})
	t.Run("loopback only", func(t *testing.T) {
		if err := CheckLoopback("0.0.0.0:9877"); err == nil {
			t.Error("wildcard address accepted")
		}
		if err := CheckLoopback("127.0.0.1:9877"); err != nil {
			t.Error(err)
		}
		if _, err := Listen("", "10.0.0.1:1"); err == nil {
			t.Error("non-loopback listener opened")
		}
	})
}

func TestFollowerLag(t *testing.T) {
	st := must[*Store](t)(OpenStore(StoreOptions{RingSize: 64, FollowBuffer: 2}))
	sub := must[*Subscription](t)(st.Subscribe(Filter{}))
	for i := range 5 {
		st.Append(rec(time.Now(), i))
	}
	if n := sub.Skipped(); n != 3 {
		t.Errorf("skipped %d, want 3", n)
	}
	if r := <-sub.C(); r.Seq != 1 {
		t.Errorf("first %d", r.Seq)
	}
	st.Close()
	<-sub.C()
	if _, ok := <-sub.C(); ok {
		t.Error("subscription open after store close")
	}
	sub.Close() // idempotent
}
