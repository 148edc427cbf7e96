// The vCenter simulator the local stack runs: VMware's govmomi simulator library at a pinned
// release, served by main.go (see there why the command is ours). Built by hack/testbin.sh.
module github.com/vmgroup-operator/hack/tools/vcsim

go 1.26.0

require github.com/vmware/govmomi v0.56.0

require (
	github.com/google/uuid v1.6.0 // indirect
	gopkg.in/yaml.v3 v3.0.1 // indirect
)
