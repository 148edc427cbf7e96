# The one image of vmgroup-operator: `vmgroup-webhook` and `vmgroup-controller` (the chart picks
# the command). The same image as `make image` (hack/image/build.sh), which builds it here without
# Docker: Debian bookworm's Python 3.11, the project in /opt/venv from constraints.txt, byte-code
# with checked hashes, no kubernetes/aio, user 65532. tests/unit/test_image.py holds the two in step.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY vmgroup_api/ vmgroup_api/
COPY kubekit/ kubekit/
COPY webhook/ webhook/
COPY controller/ controller/
COPY initializers/ initializers/
ARG SITE=/opt/venv/lib/python3.11/site-packages
RUN python -m venv --without-pip /opt/venv \
 && pip install --no-cache-dir --disable-pip-version-check --no-compile \
      --python /opt/venv/bin/python -c constraints.txt . \
 && rm -rf $SITE/kubernetes/aio /opt/venv/bin/Activate.ps1 \
 && find $SITE -path '*/kubernetes/*' \( -name '*_test.py' -o -name 'test_*.py' \) -delete \
 && /opt/venv/bin/python -m compileall -q -f -j0 --invalidation-mode checked-hash $SITE

FROM python:3.11-slim-bookworm
# A stale timestamp-based .pyc on a read-only root file system is recompiled in memory by every
# process: the interpreter's own byte-code is made hash-checked too.
RUN python -m compileall -q -f -j0 --invalidation-mode checked-hash /usr/local/lib/python3.11 \
 && pip uninstall -y --no-cache-dir pip setuptools wheel \
 && echo 'nonroot:x:65532:65532:nonroot:/nonexistent:/usr/sbin/nologin' >> /etc/passwd \
 && echo 'nonroot:x:65532:' >> /etc/group
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LANG=C.UTF-8
# The same uid/gid the chart's securityContext runs as; nothing in the image is writable by it.
USER 65532:65532
# The webhook's TLS port; the controller's /healthz, /readyz and /metrics (plain HTTP).
EXPOSE 8443 8080
CMD ["vmgroup-webhook", "--help"]
