// Command mkimage builds a single-layer container image from local files and
// writes it as a docker-archive tarball, ready for `ctr images import`. It needs
// no registry and no docker engine.
//
//	mkimage -o out.tar -ref zt.local/zt-agent:dev -entrypoint /zt-agent \
//	    _out/bin/zt-agent:/zt-agent _out/bin/ztctl:/ztctl
//
// Every positional argument is SRC:DST (a regular file copied to the absolute
// path DST, mode kept) or DST/ (an empty directory). -entrypoint, -cmd and -env
// may be repeated. The image is linux/amd64 (or -arch), with a fixed creation
// time so the same inputs give the same image ID.
package main

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("mkimage", flag.ContinueOnError)
	out := fs.String("o", "", "output docker-archive tarball (required)")
	ref := fs.String("ref", "", "image reference, e.g. zt.local/zt-agent:dev (required)")
	arch := fs.String("arch", runtime.GOARCH, "image architecture")
	workdir := fs.String("workdir", "/", "working directory")
	user := fs.String("user", "", "user (empty: root)")
	var entrypoint, cmd, env list
	fs.Var(&entrypoint, "entrypoint", "entrypoint argument (repeatable)")
	fs.Var(&cmd, "cmd", "cmd argument (repeatable)")
	fs.Var(&env, "env", "KEY=VALUE (repeatable)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *out == "" || *ref == "" || fs.NArg() == 0 {
		return errors.New("usage: mkimage -o OUT.tar -ref NAME:TAG [-entrypoint ARG]... [-cmd ARG]... [-env K=V]... SRC:DST|DIR/ ...")
	}
	tag, err := name.NewTag(*ref, name.StrictValidation)
	if err != nil {
		return fmt.Errorf("reference %q: %w", *ref, err)
	}
	layerTar, err := buildLayer(fs.Args())
	if err != nil {
		return err
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	})
	if err != nil {
		return fmt.Errorf("layer: %w", err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		return fmt.Errorf("append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.OS = "linux"
	cf.Architecture = *arch
	cf.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cf.Config.Entrypoint = entrypoint
	cf.Config.Cmd = cmd
	cf.Config.Env = append([]string{"PATH=/usr/local/bin:/usr/bin:/bin"}, env...)
	cf.Config.WorkingDir = *workdir
	cf.Config.User = *user
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return fmt.Errorf("set config: %w", err)
	}
	if err := tarball.WriteToFile(*out, tag, img); err != nil {
		return fmt.Errorf("write %s: %w", *out, err)
	}
	id, err := img.ConfigName()
	if err != nil {
		return fmt.Errorf("image id: %w", err)
	}
	fmt.Printf("%s %s %s\n", tag.Name(), id, *out)
	return nil
}

// buildLayer returns an uncompressed tar of the given SRC:DST files and DIR/
// directories, parents created as needed, entries sorted, times zeroed.
func buildLayer(specs []string) ([]byte, error) {
	type entry struct {
		src  string // empty for a directory
		mode int64
	}
	entries := map[string]entry{}
	addParents := func(p string) {
		for d := path.Dir(p); d != "/" && d != "."; d = path.Dir(d) {
			if _, ok := entries[d]; !ok {
				entries[d] = entry{mode: 0o755}
			}
		}
	}
	for _, s := range specs {
		if strings.HasSuffix(s, "/") && !strings.Contains(s, ":") {
			d := path.Clean(s)
			if !path.IsAbs(d) {
				return nil, fmt.Errorf("directory %q: not absolute", s)
			}
			entries[d] = entry{mode: 0o755}
			addParents(d)
			continue
		}
		src, dst, ok := strings.Cut(s, ":")
		if !ok || src == "" || !path.IsAbs(dst) {
			return nil, fmt.Errorf("file %q: want SRC:/ABS/DST", s)
		}
		st, err := os.Stat(src)
		if err != nil {
			return nil, fmt.Errorf("file %q: %w", s, err)
		}
		if !st.Mode().IsRegular() {
			return nil, fmt.Errorf("file %q: not a regular file", src)
		}
		dst = path.Clean(dst)
		entries[dst] = entry{src: src, mode: int64(st.Mode().Perm())}
		addParents(dst)
	}
	names := make([]string, 0, len(entries))
	for n := range entries {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		e := entries[n]
		h := &tar.Header{Name: strings.TrimPrefix(n, "/"), Mode: e.mode, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
		if e.src == "" {
			h.Typeflag = tar.TypeDir
			h.Name += "/"
			if err := tw.WriteHeader(h); err != nil {
				return nil, fmt.Errorf("tar %s: %w", n, err)
			}
			continue
		}
		data, err := os.ReadFile(e.src)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", e.src, err)
		}
		h.Typeflag = tar.TypeReg
		h.Size = int64(len(data))
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("tar %s: %w", n, err)
		}
		if _, err := tw.Write(data); err != nil {
			return nil, fmt.Errorf("tar %s: %w", n, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("tar: %w", err)
	}
	return buf.Bytes(), nil
}
