#!/usr/bin/env bash
# `make image`: the project's OCI image, built here without Docker or a registry.
#
#   base layer  Debian bookworm from Debian's packages (mmdebstrap --variant=essential, unpacked
#               from its package by hack/debs.sh): python3 and ca-certificates, no pip, no apt,
#               no docs or locales, user nonroot 65532, byte-code compiled with checked hashes;
#   venv layer  /opt/venv: the project and its pinned dependencies (constraints.txt), installed
#               from wheels built by the image's own python3 in a throw-away copy of the base;
#               pip is run from its wheel, never installed; kubernetes/aio (68 MB, unused) and
#               the libraries' tests are dropped; byte-code compiled with checked hashes.
#
# The source is what .dockerignore lets into a Docker build, so Dockerfile and this recipe build
# the same thing (tests/unit/test_image.py holds them in step). Each layer is cached under a key
# of all that goes into it (the base: the recipe and the package versions Debian serves today),
# so a second run with nothing changed takes seconds. Prints the image archive's path.
#
#   VMGROUP_IMAGE_REF   name:tag (default vmgroup-operator:<the chart's appVersion>)
#   VMGROUP_TESTBIN_CACHE, XDG_CACHE_HOME   move the cache (as hack/testbin.sh)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
python=${PYTHON:-$repo/.venv/bin/python}
cache="${VMGROUP_TESTBIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmgroup-operator/testbin}/image"
out="$cache/out"
app_version=$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$repo/charts/vmgroup-operator/Chart.yaml")
ref=${VMGROUP_IMAGE_REF:-vmgroup-operator:$app_version}
pip_version=26.3
suite=bookworm
export SOURCE_DATE_EPOCH=0  # every mtime and "created": the layers depend on content only
export LC_ALL=C.UTF-8
(( EUID == 0 )) || { echo "image: mmdebstrap and chroot need root" >&2; exit 1; }
debs=$("$repo/hack/debs.sh")
mkdir -p "$cache" "$out"
work=$(mktemp -d "$cache/work.XXXXXX")
trap 'rm -rf "$work"' EXIT
t0=$SECONDS
log() { printf 'image: [%3ds] %s\n' $((SECONDS - t0)) "$*" >&2; }
key() { sha256sum | cut -c1-16; }

# ---- base layer -------------------------------------------------------------------------------
# The machine's own Debian sources: this recipe names no mirror.
sources=/etc/apt/sources.list.d/debian.sources
[[ -f $sources ]] || sources=/etc/apt/sources.list
packages=$(grep -v '^#' "$here/packages.txt" | xargs | tr ' ' ,)
mm=(perl "$debs/usr/bin/mmdebstrap" --variant=essential
    --hook-dir="$debs/usr/share/mmdebstrap/hooks/merged-usr" --include="$packages"
    --dpkgopt="$here/dpkg-excludes.cfg" --aptopt='Acquire::Retries "3"')
# What Debian serves today for the recipe (a simulation: seconds, no download); a security update
# gives a new key, so a new base.
resolved=$("${mm[@]}" --simulate -v "$suite" /dev/null "$sources" </dev/null 2>&1 \
           | awk '/^Inst /{print $2, $3}' | sort -u)
[[ -n $resolved ]] || { echo "image: could not resolve the base packages" >&2; exit 1; }
base_key=$( { echo "${mm[*]#$debs}"; echo "$resolved"; cat "$here/base-customize.sh" \
              "$here/packages.txt" "$here/dpkg-excludes.cfg"; } | key)
base=$cache/base-$base_key
if [[ ! -f $base/layer.tar ]]; then
  log "base $base_key: mmdebstrap $suite +$packages"
  rm -rf "$base" "$base.partial" && mkdir -p "$base.partial/rootfs"
  "${mm[@]}" --customize-hook="$here/base-customize.sh" \
      "$suite" "$base.partial/rootfs" "$sources" </dev/null > "$base.partial/mmdebstrap.log" 2>&1 \
      || { tail -20 "$base.partial/mmdebstrap.log" >&2; exit 1; }
  # apt is not in the image: its state and cache are mmdebstrap's leftovers
  rm -rf "$base.partial/rootfs"/var/lib/apt "$base.partial/rootfs"/var/cache/apt "$base.partial/rootfs"/tmp/*
  chroot "$base.partial/rootfs" dpkg-query -W -f '${Package} ${Version}\n' > "$base.partial/packages.lock"
  "$python" -m hack.image.oci layer "$base.partial/rootfs" "$base.partial/layer.tar"
  mv "$base.partial" "$base"
else
  log "base $base_key: cached"
fi

# ---- the project's source: what .dockerignore lets into a Docker build context ----------------
mkdir -p "$work/src"
(cd "$repo" && for f in $(sed -n 's/^!//p' .dockerignore); do cp -r --parents "${f%/}" "$work/src/"; done)
find "$work/src" -name __pycache__ -prune -exec rm -rf {} +

# ---- wheels, built by the image's python3 (its tags and markers) in a throw-away copy ----------
py_version=$(chroot "$base/rootfs" dpkg-query -W -f '${Version}' python3.11)
wheel_key=$( { echo "$pip_version $py_version"; cd "$work/src" && find . -type f | LC_ALL=C sort \
               | while read -r f; do echo "$f"; sha256sum < "$f"; done; } | key)
wheels=$cache/wheels-$wheel_key
pip_wheel=$cache/pip-$pip_version-py3-none-any.whl
[[ -f $pip_wheel ]] || "$python" -m pip download -q --no-deps --only-binary :all: -d "$cache" "pip==$pip_version"
root=$work/rootfs
prepare_root() {  # a throw-away copy of the base to chroot into
  [[ -d $root ]] && return
  cp -a "$base/rootfs" "$root"
  mkdir -p "$root/tmp/build"
  cp "$pip_wheel" "$root/tmp/build/pip.whl"
  # PyPI as this machine reaches it (its CA bundle, resolver and proxy); thrown away with the copy
  cp "${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}" "$root/tmp/build/ca.crt"
  cp /etc/resolv.conf "$root/etc/resolv.conf"
}
in_root=(chroot "$root" env -i PATH=/usr/bin:/bin HOME=/tmp/build LC_ALL=C.UTF-8
         PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_CERT=/tmp/build/ca.crt
         SOURCE_DATE_EPOCH=315532800  # zip timestamps start at 1980: the project's wheel is reproducible
         ${PIP_INDEX_URL:+PIP_INDEX_URL=$PIP_INDEX_URL} ${https_proxy:+https_proxy=$https_proxy}
         ${HTTPS_PROXY:+HTTPS_PROXY=$HTTPS_PROXY})
if [[ ! -d $wheels ]]; then
  log "wheels $wheel_key: pip wheel"
  prepare_root
  cp -r "$work/src" "$root/tmp/build/src"
  "${in_root[@]}" /usr/bin/python3 /tmp/build/pip.whl/pip wheel -q --wheel-dir /tmp/build/wheels \
      -c /tmp/build/src/constraints.txt /tmp/build/src
  rm -rf "$wheels.partial" && mv "$root/tmp/build/wheels" "$wheels.partial" && mv "$wheels.partial" "$wheels"
else
  log "wheels $wheel_key: cached"
fi

# ---- venv layer ------------------------------------------------------------------------------
project=$("$python" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["name"])' "$work/src/pyproject.toml")
venv_key=$( { echo "$base_key"; sha256sum "$wheels"/*.whl | cut -d' ' -f1;
              sed -n '/^# ---- venv layer/,/^# ---- image/p' "${BASH_SOURCE[0]}"; } | key)
venv=$cache/venv-$venv_key
if [[ ! -f $venv/layer.tar ]]; then
  log "venv $venv_key: install"
  prepare_root
  rm -rf "$venv.partial" && mkdir -p "$venv.partial"
  cp -r "$wheels" "$root/tmp/build/wheels"
  cp "$work/src/constraints.txt" "$root/tmp/build/constraints.txt"
  chroot "$root" /usr/bin/python3 -m venv --without-pip /opt/venv
  "${in_root[@]}" /opt/venv/bin/python /tmp/build/pip.whl/pip install -q --no-index \
      --find-links /tmp/build/wheels --only-binary :all: --no-compile \
      -c /tmp/build/constraints.txt "$project"
  site=/opt/venv/lib/python3.11/site-packages
  rm -f "$root"/opt/venv/bin/Activate.ps1 "$root"/opt/venv/bin/activate.{csh,fish}
  # kubernetes/aio is a second, asyncio client (68 MB) that nothing here imports.
  rm -rf "$root$site/kubernetes/aio"
  find "$root$site" \( -name '*_test.py' -o -name 'test_*.py' \) -path '*/kubernetes/*' -delete
  chroot "$root" /opt/venv/bin/python -m compileall -q -f -j0 --invalidation-mode checked-hash \
      "$site" > /dev/null
  (cd "$root$site" && ls -d ./*.dist-info | sed 's|^\./||') > "$venv.partial/dists.txt"
  "$python" -m hack.image.oci layer "$root" "$venv.partial/layer.tar" --subtree opt/venv
  rm -rf "$venv" && mv "$venv.partial" "$venv"
else
  log "venv $venv_key: cached"
fi

# ---- image -----------------------------------------------------------------------------------
cat > "$work/config.json" <<'JSON'
{"User": "65532:65532",
 "Env": ["PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
         "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1", "LANG=C.UTF-8"],
 "Cmd": ["vmgroup-webhook", "--help"],
 "WorkingDir": "/",
 "ExposedPorts": {"8443/tcp": {}, "8080/tcp": {}}}
JSON
digest=$("$python" -m hack.image.oci image "$work/layout" --config "$work/config.json" --ref "$ref" \
         --layer "$base/layer.tar" --history "mmdebstrap --variant=essential $suite +$packages" \
         --layer "$venv/layer.tar" --history "/opt/venv: $project from wheels (constraints.txt)" \
         --archive "$out/image.oci.tar.partial")
mv "$out/image.oci.tar.partial" "$out/image.oci.tar"
printf '%s\n' "$ref" > "$out/ref"
printf '%s\n' "$digest" > "$out/digest"
cp "$base/packages.lock" "$venv/dists.txt" "$out/"
size=$(( $(stat -c %s "$base/layer.tar") + $(stat -c %s "$venv/layer.tar") ))
log "$ref $digest: $((size / 1000000)) MB uncompressed (base $(( $(stat -c %s "$base/layer.tar") / 1000000 )) MB, venv $(( $(stat -c %s "$venv/layer.tar") / 1000000 )) MB)"
echo "$out/image.oci.tar"
