#!/usr/bin/env bash
# Builds the real binaries the local stack runs (kube-apiserver, kube-controller-manager, kubectl,
# the node's kubelet, kube-scheduler and kube-proxy, etcd, vcsim, govc, helm, and the benchmarks'
# load generator fortio) from the Go modules pinned under hack/tools/, into a cache outside
# the repository. The bin directory is named after a hash of every pin and build flag, so a
# changed pin builds a new set (Go's own build cache makes unchanged parts quick) and an
# unchanged set is never rebuilt.
#
#   hack/testbin.sh          build what is missing, then print the bin directory
#   hack/testbin.sh dir      print the bin directory only (nothing is built)
#
# VMGROUP_TESTBIN_CACHE overrides the cache root (default: $XDG_CACHE_HOME or ~/.cache).
set -euo pipefail

command -v go >/dev/null || { echo "testbin: a Go toolchain (go 1.26+) is required on PATH" >&2; exit 1; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tools="$here/tools"
cache="${VMGROUP_TESTBIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmgroup-operator/testbin}"

pin() { # the version of module $2 that tool set $1 pins
  (cd "$tools/$1" && GOFLAGS=-mod=readonly go list -m -f '{{.Version}}' "$2")
}

k8s_version=$(pin kubernetes k8s.io/kubernetes)   # vX.Y.Z
k8s_minor=$(echo "$k8s_version" | cut -d. -f2)
helm_version=$(pin helm helm.sh/helm/v4)
govc_version=$(pin govc github.com/vmware/govmomi)

# Without these -X flags a Kubernetes binary reports v0.0.0 and clients refuse it
# (kubectl version skew, helm kubeVersion constraints).
k8s_ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  k8s_ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$k8s_minor"
  k8s_ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
done

cert_manager_version=v1.21.2  # only its CRDs are used (chart tests)

helm_ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$helm_version"
helm_ldflags+=" -X helm.sh/helm/v4/internal/version.metadata="
govc_ldflags="-s -w -X github.com/vmware/govmomi/govc/flags.BuildVersion=${govc_version#v}"

# One bin directory for the whole pinned set, named after everything that goes into a build:
# a changed pin or flag gives a new directory, an unchanged set is never rebuilt.
set_hash=$( (cat "$tools"/*/go.mod "$tools"/*/go.sum "$tools"/*/*.go; echo "$k8s_ldflags $helm_ldflags $govc_ldflags $cert_manager_version") \
  | sha256sum | cut -c1-12)
bindir="$cache/$set_hash/bin"

if [[ -z "$k8s_version" || -z "$helm_version" || -z "$govc_version" ]]; then
  echo "testbin: could not read the pinned versions from hack/tools/*/go.mod" >&2
  exit 1
fi

if [[ "${1:-}" == "dir" ]]; then
  echo "$bindir"
  exit 0
fi

build() { # set ldflags "binaries..." package... (a set builds in hack/tools/<module>)
  local set=$1 ldflags=$2 bins=$3 bin missing="" module=${1%%:*}
  set=${set#*:}
  shift 3
  for bin in $bins; do
    [[ -x "$bindir/$bin" ]] || missing=1
  done
  [[ -n "$missing" ]] || return 0
  echo "testbin: building $bins ($set) ..." >&2
  local start=$SECONDS partial="$bindir/.partial-$set" rc=0 ticker
  rm -rf "$partial" # whatever a killed build of this set left behind
  # A large set (Kubernetes) builds for minutes without a word: say that it still does.
  (while sleep 30; do echo "testbin: still building $bins ($((SECONDS - start))s)" >&2; done) &
  ticker=$!
  (cd "$tools/$module" && CGO_ENABLED=0 GOFLAGS=-mod=readonly \
    go build -trimpath -ldflags "$ldflags" -o "$partial/" "$@") || rc=$?
  kill "$ticker" 2>/dev/null || true
  wait "$ticker" 2>/dev/null || true
  if (( rc != 0 )); then
    echo "testbin: building $bins ($set) failed" >&2
    exit "$rc"
  fi
  # The etcd server's package path ends in /v3, so go names its binary "server".
  if [[ "$set" == etcd && -f "$partial/server" ]]; then
    mv "$partial/server" "$partial/etcd"
  fi
  # Move into place only once every binary of the set built: a killed build leaves no half set.
  mv "$partial"/* "$bindir/"
  rmdir "$partial"
  echo "testbin: built $bins in $((SECONDS - start))s" >&2
}

mkdir -p "$bindir"
build etcd "-s -w" etcd go.etcd.io/etcd/server/v3
build vcsim "-s -w" vcsim .
build govc "$govc_ldflags" govc github.com/vmware/govmomi/govc
build helm "$helm_ldflags" helm helm.sh/helm/v4/cmd/helm
build fortio "-s -w" fortio fortio.org/fortio
build pause "-s -w" pause .
build kubernetes "$k8s_ldflags" "kube-apiserver kube-controller-manager kubectl" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl
# The node: a set of its own, so that adding it did not relink the control plane's.
build kubernetes:node "$k8s_ldflags" "kubelet kube-scheduler kube-proxy" \
  k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kube-proxy

# cert-manager's CRDs, so the chart's cert-manager mode is checked against the real API shape.
crds="$bindir/../crds/cert-manager"
if [[ ! -f "$crds/cert-manager.io_certificates.yaml" ]]; then
  moddir=$(cd "$tools" && go mod download -json "github.com/cert-manager/cert-manager@$cert_manager_version" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
  mkdir -p "$crds"
  cp "$moddir"/deploy/crds/cert-manager.io_{certificates,issuers,clusterissuers}.yaml "$crds/"
fi
echo "$bindir"
