# The one image of vmgroup-operator: `vmgroup-webhook` and `vmgroup-controller` (the chart picks
# the command). Multi-stage: build a virtualenv, then copy it onto a slim base as non-root.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY vmgroup_api/ vmgroup_api/
COPY kubekit/ kubekit/
COPY webhook/ webhook/
COPY controller/ controller/
COPY initializers/ initializers/
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check -c constraints.txt .

FROM python:3.11-slim-bookworm
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# The same uid/gid the chart's securityContext runs as; nothing in the image is writable by it.
USER 65532:65532
# The webhook's TLS port; the controller's /healthz, /readyz and /metrics (plain HTTP).
EXPOSE 8443 8080
CMD ["vmgroup-webhook", "--help"]
