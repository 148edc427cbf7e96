// Command pause is the local node's only non-project container binary: the Pod sandbox image
// (there is no registry to pull registry.k8s.io/pause from) and the tests' sidecar.
//
//	pause          wait for SIGTERM or SIGINT, then exit 0 (a sandbox, a sidecar that runs)
//	pause exit     exit 0 at once (an init container that succeeds)
//	pause write P  try to create the file P; exit 1 with the error when it cannot be written
package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "exit":
			return
		case "write":
			if len(os.Args) != 3 {
				fmt.Fprintln(os.Stderr, "usage: pause write PATH")
				os.Exit(2)
			}
			if err := os.WriteFile(os.Args[2], []byte("x"), 0o600); err != nil {
				fmt.Fprintln(os.Stderr, err)
				os.Exit(1)
			}
			fmt.Println("wrote", os.Args[2])
			return
		default:
			fmt.Fprintln(os.Stderr, "usage: pause [exit | write PATH]")
			os.Exit(2)
		}
	}
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	fmt.Println("pause: waiting for SIGTERM")
	<-signals
}
