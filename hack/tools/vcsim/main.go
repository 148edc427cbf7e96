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
	"net/http"
	_ "net/http/pprof" // served only with -pprof
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

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
	taskDelay := flag.String("task-delay", "", "per-task delays: 'CloneVm:ms,PowerOn:ms' (task "+
		"names, not methods): the call returns at once and the task takes this long, as in a "+
		"real vCenter, where -method-delay makes the call itself slow")
	guestNet := flag.String("guest-net", "198.18.0.0/15",
		"addresses the simulated guests report (a range reserved for benchmarks: never routed)")
	guestDelay := flag.Duration("guest-delay", 500*time.Millisecond,
		"time from power-on until a guest reports its address, as VMware Tools does once booted")
	pprofAddr := flag.String("pprof", "", "serve Go's profiler on this host:port (benchmarks)")
	flag.Parse()
	if *pprofAddr != "" {
		go func() { log.Println(http.ListenAndServe(*pprofAddr, nil)) }()
	}

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
	taskDelays, err := parseDelays(*taskDelay)
	if err != nil {
		log.Fatalf("vcsim: -task-delay: %v", err)
	}
	if len(taskDelays) > 0 {
		// Without the hand-off the VM stays locked while its task waits, and nothing (the
		// property collector included) could read it meanwhile.
		taskDelays["LockHandoff"] = 0
		simulator.TaskDelay = simulator.DelayConfig{MethodDelay: taskDelays, DelayJitter: *jitter}
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
	// vCenter allows 32 event collectors per session and ends them with their session; vcsim
	// counts every session's against the 32 and keeps a dead session's (a killed controller's
	// change feed) for good, which a test suite's controllers would use up.
	model.Map().EventManager().MaxCollector = 4096
	model.Map().AddHandler(ftStateFix{})
	tools, err := newGuestTools(model.Map(), *guestNet, *guestDelay)
	if err != nil {
		log.Fatalf("vcsim: -guest-net: %v", err)
	}
	model.Map().AddHandler(tools)

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

// guestTools plays the part of VMware Tools in every guest: a while after a VM powers on, its
// guest reports an address (guest.ipAddress and guest.net, as vCenter shows them), and when it
// powers off the address is gone. The simulator itself reports guest addresses only for VMs
// backed by containers (which need Docker) or set by hand through "SET.guest.ipAddress"
// extraConfig. Each VM keeps its address across power cycles, as with a DHCP lease.
type guestTools struct {
	registry *simulator.Registry
	delay    time.Duration
	mu       sync.Mutex
	next     netip.Addr
	last     netip.Addr
	leases   map[string]string // VM moref -> address
}

func newGuestTools(registry *simulator.Registry, network string, delay time.Duration) (*guestTools, error) {
	prefix, err := netip.ParsePrefix(network)
	if err != nil || !prefix.Addr().Is4() {
		return nil, fmt.Errorf("%q is not an IPv4 network", network)
	}
	prefix = prefix.Masked()
	last := prefix.Addr().As4()
	for i := prefix.Bits(); i < 32; i++ {
		last[i/8] |= 1 << (7 - i%8)
	}
	return &guestTools{registry: registry, delay: delay, next: prefix.Addr().Next(),
		last: netip.AddrFrom4(last), leases: map[string]string{}}, nil
}

func (*guestTools) Reference() types.ManagedObjectReference {
	return types.ManagedObjectReference{Type: "VmgroupGuestTools", Value: "guest-tools"}
}

func (*guestTools) PutObject(*simulator.Context, mo.Reference) {}

func (g *guestTools) RemoveObject(_ *simulator.Context, ref types.ManagedObjectReference) {
	g.mu.Lock()
	delete(g.leases, ref.Value)
	g.mu.Unlock()
}

func (g *guestTools) UpdateObject(_ *simulator.Context, obj mo.Reference, changes []types.PropertyChange) {
	ref := obj.Reference()
	if ref.Type != "VirtualMachine" {
		return
	}
	for _, change := range changes {
		if change.Name != "runtime.powerState" {
			continue
		}
		// Not here: the VM's lock is held by the call that changed it.
		on := change.Val == types.VirtualMachinePowerStatePoweredOn
		go g.report(ref, on)
	}
}

func (g *guestTools) lease(ref types.ManagedObjectReference) string {
	g.mu.Lock()
	defer g.mu.Unlock()
	if address, ok := g.leases[ref.Value]; ok {
		return address
	}
	if !g.next.IsValid() || g.last.Less(g.next) {
		return "" // the range is used up: the guest reports no address, as without DHCP
	}
	address := g.next.String()
	g.next = g.next.Next()
	g.leases[ref.Value] = address
	return address
}

func (g *guestTools) report(ref types.ManagedObjectReference, on bool) {
	if on {
		time.Sleep(g.delay) // the guest boots
	}
	address := ""
	if on {
		address = g.lease(ref)
	}
	vm, ok := g.registry.Get(ref).(*simulator.VirtualMachine)
	if !ok {
		return // destroyed meanwhile
	}
	ctx := &simulator.Context{Context: context.Background(), Map: g.registry}
	g.registry.WithLock(ctx, vm, func() {
		if (vm.Runtime.PowerState == types.VirtualMachinePowerStatePoweredOn) != on {
			return // powered off (or on) again meanwhile: that change reports itself
		}
		nics := []types.GuestNicInfo{}
		tools := types.VirtualMachineToolsRunningStatusGuestToolsNotRunning
		if on {
			tools = types.VirtualMachineToolsRunningStatusGuestToolsRunning
			if address != "" {
				nics = append(nics, types.GuestNicInfo{Network: "VM Network", Connected: true,
					DeviceConfigId: 4000, IpAddress: []string{address}})
			}
		}
		ctx.Update(vm, []types.PropertyChange{
			{Name: "guest.toolsRunningStatus", Val: string(tools)},
			{Name: "guest.net", Val: nics},
			{Name: "guest.ipAddress", Val: address},
			{Name: "summary.guest.ipAddress", Val: address},
		})
	})
}

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
