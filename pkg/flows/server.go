package flows

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Defaults of the API listeners.
const (
	DefaultSocket = "/run/zt/flows.sock"
	DefaultAddr   = "127.0.0.1:9877"
)

// MediaNDJSON is the media type of streamed responses.
const MediaNDJSON = "application/x-ndjson"

// ServerOptions configure NewHandler.
type ServerOptions struct {
	Store   *Store
	Version Version
	// Counters reads the kernel counters; nil serves 404 on /v1/counters.
	Counters func() ([]Counter, error)
	// Now is the clock relative times ("since=24h") count from.
	Now func() time.Time
}

// NewHandler serves the flows API:
//
//	GET /v1/flows?<Filter.Values>   JSON array; NDJSON with Accept: application/x-ndjson
//	                                or follow=1 (flushed per record until the client leaves)
//	GET /v1/version                 Version
//	GET /v1/counters                []Counter (non-zero kernel counters, exact)
func NewHandler(o ServerOptions) http.Handler {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Version.API == 0 {
		o.Version.API = APIVersion
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/version", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, o.Version)
	})
	mux.HandleFunc("GET /v1/counters", func(w http.ResponseWriter, _ *http.Request) {
		if o.Counters == nil {
			http.Error(w, "counters not available", http.StatusNotFound)
			return
		}
		cs, err := o.Counters()
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		if cs == nil {
			cs = []Counter{}
		}
		writeJSON(w, cs)
	})
	mux.HandleFunc("GET /v1/flows", func(w http.ResponseWriter, r *http.Request) {
		f, err := ParseFilter(r.URL.Query(), o.Now())
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		ndjson := f.Follow || strings.Contains(r.Header.Get("Accept"), MediaNDJSON)
		if ndjson {
			serveStream(r.Context(), w, o.Store, &f)
			return
		}
		serveArray(w, o.Store, &f)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(v)
}

// serveArray writes the matches as one JSON array, record by record, so
// the response is never held in memory.
func serveArray(w http.ResponseWriter, s *Store, f *Filter) {
	w.Header().Set("Content-Type", "application/json")
	bw := bufio.NewWriterSize(w, 32<<10)
	enc := json.NewEncoder(bw)
	first := true
	_ = bw.WriteByte('[')
	_, err := s.Scan(f, func(r *Record) error {
		if !first {
			_ = bw.WriteByte(',')
		}
		first = false
		return enc.Encode(r)
	})
	if err != nil && first {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	_, _ = bw.WriteString("]\n")
	_ = bw.Flush()
}

// serveStream writes the stored matches, then (follow) new ones as they
// are stored, each line flushed, until the client goes away.
func serveStream(ctx context.Context, w http.ResponseWriter, s *Store, f *Filter) {
	w.Header().Set("Content-Type", MediaNDJSON)
	w.Header().Set("Cache-Control", "no-store")
	rc := http.NewResponseController(w)
	enc := json.NewEncoder(w)
	var sub *Subscription
	if f.Follow {
		// Subscribe before scanning so nothing stored in between is lost;
		// records seen in the scan are skipped by sequence number.
		var err error
		if sub, err = s.Subscribe(*f); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		defer sub.Close()
	}
	high, err := s.Scan(f, func(r *Record) error {
		if err := enc.Encode(r); err != nil {
			return err
		}
		return nil
	})
	if err != nil {
		return
	}
	if err := rc.Flush(); err != nil || sub == nil {
		return
	}
	for {
		select {
		case <-ctx.Done():
			return
		case r, ok := <-sub.C():
			if !ok {
				return // store closed: the agent is stopping
			}
			if r.Seq <= high {
				continue
			}
			if n := sub.Skipped(); n > 0 {
				_ = enc.Encode(Record{Time: r.Time, Reason: "follower-lagged", Suppressed: n,
					Summary: fmt.Sprintf("%d records skipped: this reader fell behind (they are stored; query again with --since)", n)})
			}
			if err := enc.Encode(&r); err != nil {
				return
			}
			if err := rc.Flush(); err != nil {
				return
			}
		}
	}
}

// Listen opens the API's listeners: a unix socket at socket (mode 0600,
// a stale file replaced) and a TCP listener at addr, which must be a
// loopback address (the API is reached from elsewhere only through
// kubectl port-forward). Empty arguments are skipped.
func Listen(socket, addr string) ([]net.Listener, error) {
	var ls []net.Listener
	fail := func(err error) ([]net.Listener, error) {
		for _, l := range ls {
			_ = l.Close()
		}
		return nil, err
	}
	if socket != "" {
		if err := os.MkdirAll(filepath.Dir(socket), 0o700); err != nil {
			return fail(fmt.Errorf("create socket directory: %w", err))
		}
		if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fail(fmt.Errorf("remove stale socket: %w", err))
		}
		l, err := net.Listen("unix", socket)
		if err != nil {
			return fail(fmt.Errorf("listen on %s: %w", socket, err))
		}
		ls = append(ls, l)
		if err := os.Chmod(socket, 0o600); err != nil {
			return fail(fmt.Errorf("chmod %s: %w", socket, err))
		}
	}
	if addr != "" {
		if err := CheckLoopback(addr); err != nil {
			return fail(err)
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			return fail(fmt.Errorf("listen on %s: %w", addr, err))
		}
		ls = append(ls, l)
	}
	return ls, nil
}

// CheckLoopback returns an error unless addr is host:port with a loopback
// host.
func CheckLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("flows address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("flows address %q: must be a loopback address (127.0.0.1:PORT); reach it with kubectl port-forward", addr)
	}
	return nil
}
