package controlplane

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/scheme"
)

// How bulk pods are created (Report.BulkVia).
const (
	// BulkViaEtcd writes each pod, status included, straight into the
	// lab's etcd in the API server's own storage encoding (protobuf, the
	// "k8s\x00" envelope, key /registry/pods/NS/NAME), one put (one etcd
	// revision: one resourceVersion) per pod, etcdWorkers at once. The API
	// server's watch cache reads them from etcd's watch and serves them to
	// the agent's informers as ADDED events, as it does pods written
	// through it; admission, defaulting on write and the create-then-status
	// two-step are skipped. (Several pods per etcd transaction share one
	// revision, which the API server never does: a watch resumed at that
	// resourceVersion skips the rest of them, and pods went missing.)
	BulkViaEtcd = "etcd"
	// BulkViaAPI creates each pod through the API server (Create, then
	// UpdateStatus for its address): two writes and two watch events per
	// pod, 50 to 100 pods/s on a busy two-core machine.
	BulkViaAPI = "api"
)

// envBulkVia selects the way bulk pods are created ("etcd", the default,
// or "api").
const envBulkVia = "ZT_BENCH_BULK"

func bulkVia() (string, error) {
	switch v := os.Getenv(envBulkVia); v {
	case "", BulkViaEtcd:
		return BulkViaEtcd, nil
	case BulkViaAPI:
		return BulkViaAPI, nil
	default:
		return "", fmt.Errorf("%s=%q: want %q or %q", envBulkVia, v, BulkViaEtcd, BulkViaAPI)
	}
}

// etcdWorkers puts are in flight at once.
const etcdWorkers = 16

// etcdClientURL finds the lab etcd's client URL on its command line.
func etcdClientURL(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return "", fmt.Errorf("etcd command line: %w", err)
	}
	for _, a := range strings.Split(string(b), "\x00") {
		if v, ok := strings.CutPrefix(a, "--listen-client-urls="); ok {
			return strings.Split(v, ",")[0], nil
		}
	}
	return "", fmt.Errorf("no --listen-client-urls in etcd's (pid %d) command line", pid)
}

// etcdWriter puts objects into etcd through its gRPC gateway (JSON over
// HTTP), as the API server stores them.
type etcdWriter struct {
	url string
	hc  *http.Client
	enc *protobuf.Serializer
}

func newEtcdWriter(url string) *etcdWriter {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = etcdWorkers
	return &etcdWriter{url: url, hc: &http.Client{Timeout: 30 * time.Second, Transport: tr},
		enc: protobuf.NewSerializer(scheme.Scheme, scheme.Scheme)}
}

// storagePod is bulk pod i as the API server would store it after
// Create and UpdateStatus (no resourceVersion: etcd's revision is).
func storagePod(i int, created time.Time) *corev1.Pod {
	p := bulkPod(i)
	p.TypeMeta = metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"}
	p.UID = types.UID(fmt.Sprintf("5a7e0000-0000-4000-8000-%012d", i))
	p.CreationTimestamp = metav1.NewTime(created)
	p.Spec.RestartPolicy = corev1.RestartPolicyAlways
	p.Spec.DNSPolicy = corev1.DNSClusterFirst
	p.Spec.SchedulerName = corev1.DefaultSchedulerName
	p.Spec.TerminationGracePeriodSeconds = new(int64(30))
	p.Spec.Containers[0].TerminationMessagePath = corev1.TerminationMessagePathDefault
	p.Spec.Containers[0].TerminationMessagePolicy = corev1.TerminationMessageReadFile
	p.Spec.Containers[0].ImagePullPolicy = corev1.PullIfNotPresent
	ip := bulkIP(i)
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}}
	return p
}

// putPod writes bulk pod i.
func (w *etcdWriter) putPod(ctx context.Context, i int, created time.Time, buf *bytes.Buffer) error {
	p := storagePod(i, created)
	buf.Reset()
	if err := w.enc.Encode(p, buf); err != nil {
		return fmt.Errorf("encode pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	key := "/registry/pods/" + p.Namespace + "/" + p.Name
	body, err := json.Marshal(map[string]string{
		"key": base64.StdEncoding.EncodeToString([]byte(key)), "value": base64.StdEncoding.EncodeToString(buf.Bytes())})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url+"/v3/kv/put", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := w.hc.Do(req)
	if err != nil {
		return fmt.Errorf("etcd put %s: %w", key, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("etcd put %s: %s: %s", key, resp.Status, out)
	}
	return nil
}

// grow writes bulk pods from..total-1 into etcd on etcdWorkers workers.
func (w *etcdWriter) grow(ctx context.Context, from, total int) error {
	created := time.Now()
	var next atomic.Int64
	next.Store(int64(from))
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for range etcdWorkers {
		wg.Go(func() {
			var buf bytes.Buffer
			for {
				i := int(next.Add(1) - 1)
				if i >= total || ctx.Err() != nil {
					return
				}
				if err := w.putPod(ctx, i, created, &buf); err != nil {
					once.Do(func() { first = err })
					next.Store(int64(total))
					return
				}
			}
		})
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}

var errNoEtcd = errors.New("the lab has no etcd process")
