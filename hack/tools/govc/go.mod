// Pins govc, the vSphere CLI that `make dev` puts on PATH, built by hack/testbin.sh.
// v0.46.3 is the newest govmomi release whose govc command is part of the published module;
// later releases moved it into a nested module that carries no release tags, so the module
// proxy cannot serve it. govc is only a client here: the simulator is newer (../vcsim).
module github.com/vmgroup-operator/hack/tools/govc

go 1.26.0

tool github.com/vmware/govmomi/govc

require (
	github.com/a8m/tree v0.0.0-20210115125333-10a5fd5b637d // indirect
	github.com/dougm/pretty v0.0.0-20171025230240-2ee9d7453c02 // indirect
	github.com/google/uuid v1.6.0 // indirect
	github.com/kr/text v0.2.0 // indirect
	github.com/rogpeppe/go-internal v1.16.0 // indirect
	github.com/vmware/govmomi v0.46.3 // indirect
	github.com/xlab/treeprint v1.2.0 // indirect
	golang.org/x/text v0.19.0 // indirect
)
