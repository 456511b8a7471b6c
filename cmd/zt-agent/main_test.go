package main

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/ztnet/zt/pkg/datapath"
)

func TestConfigErrors(t *testing.T) {
	env := map[string]string{}
	getenv := func(k string) string { return env[k] }
	for _, tc := range []struct {
		args []string
		env  map[string]string
		want string
		code int
	}{
		{nil, nil, "--node-name is required", 1},
		{[]string{"--node-name=n", "--min-sync-interval=0s", "--kubeconfig=/nonexistent"}, nil, "--min-sync-interval 0s", 1},
		{[]string{"--node-name=n", "--kubeconfig=/nonexistent"}, nil, "--kubeconfig: stat /nonexistent", 1},
		{[]string{"--log-format=xml"}, nil, `--log-format "xml"`, 2},
		{[]string{"--node-name=n"}, map[string]string{"ZT_RECONCILE_INTERVAL": "soon"}, `ZT_RECONCILE_INTERVAL="soon"`, 2},
		{[]string{"--node-name=n", "--default-deny-exemptions=/x", "--kubeconfig=/nonexistent"}, nil, "--default-deny-exemptions needs --cluster-default-deny", 1},
		{[]string{"--bogus"}, nil, "flag provided but not defined", 2},
		{[]string{"--map-sizes=ipcache"}, nil, `"ipcache": want NAME=N`, 2},
		{[]string{"--map-sizes=bogus=5"}, nil, `"bogus=5": want NAME=N`, 2},
		{[]string{"--map-sizes=policy=0"}, nil, `"policy=0": want a positive number`, 2},
		{[]string{"--service-mark=x"}, nil, `invalid value "x" for flag -service-mark`, 2},
		{[]string{"--service-cidrs=10.0.0.0/33"}, nil, `invalid value "10.0.0.0/33" for flag -service-cidrs`, 2},
	} {
		env = tc.env
		var out bytes.Buffer
		code := run(context.Background(), tc.args, getenv, &out)
		if code != tc.code || !strings.Contains(out.String(), tc.want) {
			t.Errorf("zt-agent %v (env %v): exit %d, output %q; want exit %d and %q", tc.args, tc.env, code, out.String(), tc.code, tc.want)
		}
	}
}

func TestEnvOverride(t *testing.T) {
	// NODE_NAME (the downward API's usual name) fills --node-name; a flag
	// on the command line wins over the environment.
	env := map[string]string{"NODE_NAME": "node-a", "ZT_MIN_SYNC_INTERVAL": "0s"}
	var out bytes.Buffer
	code := run(context.Background(), []string{"--min-sync-interval=50ms", "--kubeconfig=/nonexistent"}, func(k string) string { return env[k] }, &out)
	if code != 1 || strings.Contains(out.String(), "node-name is required") || strings.Contains(out.String(), "min-sync-interval") || !strings.Contains(out.String(), "kubeconfig") {
		t.Errorf("exit %d, output %q", code, out.String())
	}
}

func TestParseMapSizes(t *testing.T) {
	var s datapath.MapSizes
	if err := parseMapSizes("ipcache=1048576, policy=0x40000,conntrack=524288,events=2097152", &s); err != nil {
		t.Fatal(err)
	}
	want := datapath.MapSizes{IPCache: 1 << 20, Policy: 1 << 18, Conntrack: 1 << 19, EventsBytes: 1 << 21}
	if s != want {
		t.Errorf("parsed %+v, want %+v", s, want)
	}
}
