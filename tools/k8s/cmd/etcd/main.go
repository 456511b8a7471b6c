// Command etcd is the etcd server, built from the go.etcd.io/etcd/server/v3
// module version pinned in this module's go.mod, for tests that need a real
// kube-apiserver (see internal/testenv and hack/k8s-bins.sh).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
