// Command pause is the pod sandbox image's only process: it waits for SIGTERM,
// SIGINT or SIGKILL and exits. hack/cluster.sh packs it as the local
// sandbox_image, so containerd needs no registry.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, syscall.SIGTERM, syscall.SIGINT)
	<-ch
}
