"""The local stack: real etcd, kube-apiserver, kube-controller-manager and VMware's vcsim.

Used by the pytest fixtures (tests/conftest.py), by `make dev` (python -m hack.stack) and by
the benchmarks. Nothing here is a fake: every part is the upstream binary built by
hack/testbin.sh, started on free 127.0.0.1 ports with TLS.
"""

from .components import CRD_PATH, REPO, bin_dir, binary
from .process import StackError, poll
from .stack import LocalStack
from .vsphere import VCenterInfo

__all__ = ["CRD_PATH", "REPO", "LocalStack", "StackError", "VCenterInfo", "bin_dir", "binary",
           "poll"]
