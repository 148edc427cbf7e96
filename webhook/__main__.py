"""`vmgroup-webhook`: serve the admission webhook (Flask under gunicorn, TLS).

Every flag can also be given as an environment variable, VMGROUP_WEBHOOK_<FLAG> (for example
VMGROUP_WEBHOOK_MAX_CPU=16), which is how the Helm chart configures it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile

from initializers.inject import DEFAULT_PREFIX
from kubekit.cli import LOG_LEVELS, ConfigError, EnvParser, fail, kube_client

from .server import ServerSettings, WebhookServer
from .vmgroup import Policy

ENV_PREFIX = "VMGROUP_WEBHOOK_"


def parser() -> argparse.ArgumentParser:
    defaults, server = Policy(), ServerSettings(cert_file="", key_file="")
    p = EnvParser("vmgroup-webhook", "Admission webhook of vmgroup-operator: defaults and "
                  "validates VmGroups, injects initializers.", ENV_PREFIX)
    add = p.add

    add("tls-cert-file", None, "PEM certificate to serve (re-read when it changes)")
    add("tls-key-file", None, "PEM key of the certificate (re-read when it changes)")
    add("bind", server.bind, "address to listen on (default: %(default)s)")
    add("workers", server.workers, "gunicorn worker processes (default: %(default)s)", int)
    add("threads", server.threads, "threads per worker (default: %(default)s)", int)
    add("max-request-bytes", server.max_request_bytes,
        "largest request body accepted (default: %(default)s)", int)
    add("max-cpu", defaults.max_cpu, "policy: most vCPUs per VM (default: %(default)s)", int)
    add("max-memory", defaults.max_memory,
        "policy: most memory per VM, in GB (default: %(default)s)", int)
    add("max-replicas", defaults.max_replicas,
        "policy: most VMs in one group (default: %(default)s)", int)
    add("default-template", "", "template for groups that name none (default: none)")
    add("log-level", "info", "debug, info, warning or error (default: %(default)s)",
        choices=LOG_LEVELS)
    add("namespace", "", "namespace of the initializer ConfigMaps, the operator's own; "
        "never injected (default: none, no initializers)")
    add("kubeconfig", "", "kubeconfig for the ConfigMap watch (default: the Pod's account)")
    add("initializer-prefix", DEFAULT_PREFIX,
        "annotation prefix a workload asks for initializers with (default: %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.tls_cert_file or not args.tls_key_file:
        # Never fall back to plain HTTP: an empty setting is a mistake, not a choice.
        print("vmgroup-webhook: --tls-cert-file and --tls-key-file must not be empty",
              file=sys.stderr)
        return 2
    try:
        policy = Policy(max_cpu=args.max_cpu, max_memory=args.max_memory,
                        max_replicas=args.max_replicas,
                        default_template=args.default_template or None)
    except ValueError as exc:
        print(f"vmgroup-webhook: {exc}", file=sys.stderr)
        return 2
    if args.namespace:  # each worker watches the initializers: fail here, once, not in each
        try:
            kube_client(args.kubeconfig, f"--kubeconfig or {ENV_PREFIX}KUBECONFIG").close()
        except ConfigError as exc:
            fail("vmgroup-webhook", str(exc))
    # Workers share metrics through files here; it must exist, empty, before any worker starts
    # (and before prometheus_client is imported: the workers import it in WebhookServer.load).
    own_metrics_dir = "PROMETHEUS_MULTIPROC_DIR" not in os.environ
    master = os.getpid()
    if own_metrics_dir:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="vmgroup-webhook-")

    settings = ServerSettings(
        cert_file=args.tls_cert_file, key_file=args.tls_key_file, bind=args.bind,
        workers=args.workers, threads=args.threads, max_request_bytes=args.max_request_bytes,
        log_level=args.log_level, policy=policy, namespace=args.namespace or None,
        kubeconfig=args.kubeconfig or None, initializer_prefix=args.initializer_prefix)
    try:
        WebhookServer(settings).run()
    finally:
        # Workers leave through SystemExit too, and pass here: only the master may clean up,
        # or one exiting worker would take the live workers' metrics files with it.
        if own_metrics_dir and os.getpid() == master:
            shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
