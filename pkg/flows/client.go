package flows

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"syscall"
)

// ErrUnreachable is wrapped by Client errors when no agent answers.
var ErrUnreachable = errors.New("no zt-agent reachable")

// Client reads the flows API of one agent.
type Client struct {
	// Base is the URL prefix ("http://127.0.0.1:9877"); for a unix socket
	// it is "http://zt-agent".
	Base string
	// Via says how the agent is reached, for error messages.
	Via  string
	HTTP *http.Client
}

// NewSocketClient returns a client for the agent's unix socket.
func NewSocketClient(socket string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}
	return &Client{Base: "http://zt-agent", Via: "socket " + socket, HTTP: &http.Client{Transport: tr}}
}

// NewHTTPClient returns a client for a direct address ("http://127.0.0.1:9877"
// or "127.0.0.1:9877").
func NewHTTPClient(base string) *Client {
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	return &Client{Base: strings.TrimRight(base, "/"), Via: base, HTTP: &http.Client{}}
}

func (c *Client) get(ctx context.Context, path, accept string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.Base+path, nil)
	if err != nil {
		return nil, err
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT) {
			return nil, fmt.Errorf("%w via %s: %w", ErrUnreachable, c.Via, err)
		}
		return nil, fmt.Errorf("zt-agent via %s: %w", c.Via, err)
	}
	if resp.StatusCode != http.StatusOK {
		defer resp.Body.Close()
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("zt-agent via %s: %s: %s", c.Via, resp.Status, strings.TrimSpace(string(msg)))
	}
	return resp, nil
}

// Version returns the agent's version.
func (c *Client) Version(ctx context.Context) (Version, error) {
	var v Version
	resp, err := c.get(ctx, "/v1/version", "")
	if err != nil {
		return v, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		return v, fmt.Errorf("zt-agent via %s: version: %w", c.Via, err)
	}
	return v, nil
}

// Counters returns the agent's non-zero kernel counters.
func (c *Client) Counters(ctx context.Context) ([]Counter, error) {
	resp, err := c.get(ctx, "/v1/counters", "")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out []Counter
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return nil, fmt.Errorf("zt-agent via %s: counters: %w", c.Via, err)
	}
	return out, nil
}

// Query streams the records f selects to fn, oldest first; with
// f.Follow it continues with new records until ctx ends (then it returns
// nil) or the agent stops.
func (c *Client) Query(ctx context.Context, f Filter, fn func(*Record) error) error {
	resp, err := c.get(ctx, "/v1/flows?"+f.Values().Encode(), MediaNDJSON)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var r Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return fmt.Errorf("zt-agent via %s: bad record: %w", c.Via, err)
		}
		if err := fn(&r); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("zt-agent via %s: %w", c.Via, err)
	}
	return nil
}
