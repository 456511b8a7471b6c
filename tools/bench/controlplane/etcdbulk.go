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
	// "k8s\x00" envelope, key /registry/pods/NS/NAME), 128 per etcd
	// transaction. The API server's watch cache reads them from etcd's
	// watch and serves them to the agent's informers as ADDED events, as
	// it does pods written through it; admission, defaulting on write and
	// the create-then-status two-step are skipped.
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

// etcdTxnOps is etcd's default --max-txn-ops: puts per transaction.
const etcdTxnOps = 128

// etcdWorkers transactions are in flight at once.
const etcdWorkers = 4

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
	return &etcdWriter{url: url, hc: &http.Client{Timeout: 30 * time.Second},
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

type etcdPut struct {
	Key   string `json:"key"`
	Value string `json:"value"`
}

type etcdOp struct {
	RequestPut etcdPut `json:"requestPut"`
}

// putPods writes bulk pods from..to-1 in one transaction.
func (w *etcdWriter) putPods(ctx context.Context, from, to int, created time.Time) error {
	var ops struct {
		Success []etcdOp `json:"success"`
	}
	var buf bytes.Buffer
	for i := from; i < to; i++ {
		p := storagePod(i, created)
		buf.Reset()
		if err := w.enc.Encode(p, &buf); err != nil {
			return fmt.Errorf("encode pod %s/%s: %w", p.Namespace, p.Name, err)
		}
		key := "/registry/pods/" + p.Namespace + "/" + p.Name
		ops.Success = append(ops.Success, etcdOp{etcdPut{
			Key: base64.StdEncoding.EncodeToString([]byte(key)), Value: base64.StdEncoding.EncodeToString(buf.Bytes())}})
	}
	body, err := json.Marshal(ops)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url+"/v3/kv/txn", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := w.hc.Do(req)
	if err != nil {
		return fmt.Errorf("etcd txn: %w", err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("etcd txn of pods %d..%d: %s: %s", from, to-1, resp.Status, out)
	}
	var r struct {
		Succeeded bool `json:"succeeded"`
	}
	if err := json.Unmarshal(out, &r); err != nil || !r.Succeeded {
		return fmt.Errorf("etcd txn of pods %d..%d not applied: %v %s", from, to-1, err, out)
	}
	return nil
}

// growEtcd writes bulk pods from..total-1 into etcd, etcdTxnOps per
// transaction on etcdWorkers workers.
func (w *etcdWriter) grow(ctx context.Context, from, total int) error {
	created := time.Now()
	var next atomic.Int64
	next.Store(int64(from))
	var wg sync.WaitGroup
	var once sync.Once
	var first error
	for range etcdWorkers {
		wg.Go(func() {
			for {
				lo := int(next.Add(etcdTxnOps) - etcdTxnOps)
				if lo >= total || ctx.Err() != nil {
					return
				}
				if err := w.putPods(ctx, lo, min(lo+etcdTxnOps, total), created); err != nil {
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
