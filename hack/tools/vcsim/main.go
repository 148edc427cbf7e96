// Command vcsim serves VMware's vCenter simulator (package github.com/vmware/govmomi/simulator)
// for the local stack, at the govmomi release pinned in go.mod.
//
// Why a command of our own: since govmomi v0.47 the upstream vcsim command lives in a nested
// module that is never tagged, so the Go module proxy cannot serve it, and the last release
// that can be fetched (v0.46.3) ignores the CPU, memory and extraConfig of a CloneSpec, which
// the controller relies on. This wrapper only turns flags into a simulator.Model and serves
// it until SIGTERM; all vSphere behaviour is the library's, but for one fix (ftStateFix below).
package main

import (
	"context"
	"crypto/tls"
	"flag"
	"fmt"
	"log"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/vmware/govmomi/simulator"
	"github.com/vmware/govmomi/vim25/mo"
	"github.com/vmware/govmomi/vim25/types"
)

func main() {
	listen := flag.String("l", "127.0.0.1:8989", "address to listen on (host:port)")
	certFile := flag.String("tlscert", "", "PEM certificate to serve (required)")
	keyFile := flag.String("tlskey", "", "PEM key of -tlscert (required)")
	username := flag.String("username", "", "the only user allowed to log in (required)")
	password := os.Getenv("VCSIM_PASSWORD") // from the environment: argv is world-readable
	apiVersion := flag.String("api-version", "8.0.2.0", "vSphere API version to report")
	datacenters := flag.Int("dc", 1, "datacenters")
	clusters := flag.Int("cluster", 1, "clusters per datacenter")
	clusterHosts := flag.Int("host", 2, "hosts per cluster")
	standaloneHosts := flag.Int("standalone-host", 0, "standalone hosts per datacenter")
	machines := flag.Int("vm", 0, "stock VMs per resource pool")
	datastores := flag.Int("ds", 1, "datastores")
	delay := flag.Int("delay", 0, "milliseconds added to every method")
	methodDelay := flag.String("method-delay", "", "per-method delays: 'Method:ms,Method:ms'")
	jitter := flag.Float64("delay-jitter", 0, "coefficient of variation of the delays")
	flag.Parse()

	if *certFile == "" || *keyFile == "" || *username == "" || password == "" {
		log.Fatal("vcsim: -tlscert, -tlskey, -username and $VCSIM_PASSWORD are required")
	}
	cert, err := tls.LoadX509KeyPair(*certFile, *keyFile)
	if err != nil {
		log.Fatalf("vcsim: loading the TLS key pair: %v", err)
	}
	delays, err := parseDelays(*methodDelay)
	if err != nil {
		log.Fatalf("vcsim: -method-delay: %v", err)
	}

	model := simulator.VPX()
	model.ServiceContent.About.ApiVersion = *apiVersion
	model.Datacenter = *datacenters
	model.Cluster = *clusters
	model.ClusterHost = *clusterHosts
	model.Host = *standaloneHosts
	model.Machine = *machines
	model.Datastore = *datastores
	model.DelayConfig = simulator.DelayConfig{Delay: *delay, MethodDelay: delays, DelayJitter: *jitter}
	if err := model.Create(); err != nil {
		log.Fatalf("vcsim: creating the inventory: %v", err)
	}
	defer model.Remove()
	model.Map().AddHandler(ftStateFix{})

	model.Service.Listen = &url.URL{Host: *listen, User: url.UserPassword(*username, password)}
	model.Service.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
	model.Service.RegisterEndpoints = true
	server := model.Service.NewServer()
	defer server.Close()
	log.Printf("vcsim: serving vCenter (API %s) on %s", *apiVersion, server.URL.Host)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	<-ctx.Done()
	log.Print("vcsim: shutting down")
}

// ftStateFix gives every VM the faultToleranceState and recordReplayState a real vCenter
// reports. Since v0.53 the simulator leaves them empty while serializing them as required
// fields, and pyvmomi then fails to read vm.runtime or vm.summary at all (vmware/govmomi#4084).
type ftStateFix struct{}

func (ftStateFix) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "VmgroupFtStateFix", Value: "ft-state-fix"}
}

func (ftStateFix) PutObject(_ *simulator.Context, obj mo.Reference) {
	vm, ok := obj.(*simulator.VirtualMachine)
	if !ok {
		return
	}
	for _, runtime := range []*types.VirtualMachineRuntimeInfo{&vm.Runtime, &vm.Summary.Runtime} {
		if runtime.FaultToleranceState == "" {
			runtime.FaultToleranceState = types.VirtualMachineFaultToleranceStateNotConfigured
		}
		if runtime.RecordReplayState == "" {
			runtime.RecordReplayState = types.VirtualMachineRecordReplayStateInactive
		}
	}
}

func (ftStateFix) UpdateObject(*simulator.Context, mo.Reference, []types.PropertyChange) {}

func (ftStateFix) RemoveObject(*simulator.Context, types.ManagedObjectReference) {}

func parseDelays(spec string) (map[string]int, error) {
	delays := map[string]int{}
	if spec == "" {
		return delays, nil
	}
	for _, item := range strings.Split(spec, ",") {
		method, ms, ok := strings.Cut(item, ":")
		n, err := strconv.Atoi(ms)
		if !ok || method == "" || err != nil || n < 0 {
			return nil, fmt.Errorf("%q is not Method:milliseconds", item)
		}
		delays[method] = n
	}
	return delays, nil
}
