#!/usr/bin/env bash
# Fetches the local node's runtime from Debian's packages and unpacks it into a cache outside the
# repository: containerd, runc, the CNI plugins, iptables (kube-proxy's) with the libraries this
# machine may lack, and mmdebstrap (`make image` builds the image's Debian base with it). Nothing
# is installed: apt runs with a state directory of its own (its package lists and downloads stay
# in the cache), and `dpkg-deb -x` unpacks each package.
#
#   hack/debs.sh        fetch and unpack what is missing, then print the root directory
#   hack/debs.sh dir    print the root directory only (nothing is fetched)
#
# The root is named after the package list: an unchanged list is never fetched again. The
# versions Debian served are recorded in <root>/VERSIONS. VMGROUP_TESTBIN_CACHE moves the cache.
set -euo pipefail

packages=(
  containerd runc containernetworking-plugins
  iptables libip4tc2 libip6tc2 libxtables12 libnftnl11 libnetfilter-conntrack3 libnfnetlink0
  libmnl0 conntrack
  mmdebstrap
)
cache="${VMGROUP_TESTBIN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/vmgroup-operator/testbin}"
set_hash=$(printf '%s\n' "${packages[@]}" "$(dpkg --print-architecture 2>/dev/null)" | sha256sum | cut -c1-12)
root="$cache/debs-$set_hash/root"

if [[ "${1:-}" == "dir" ]]; then
  echo "$root"
  exit 0
fi
if [[ -f "$root/VERSIONS" ]]; then
  echo "$root"
  exit 0
fi
for tool in apt-get dpkg-deb; do
  command -v "$tool" >/dev/null || { echo "debs: $tool is required (a Debian-based machine)" >&2; exit 1; }
done

echo "debs: fetching ${packages[*]} from Debian ..." >&2
start=$SECONDS
work="$cache/debs-$set_hash/.partial"
rm -rf "$work" "$root"  # whatever a killed run left behind
mkdir -p "$work/lists/partial" "$work/archives/partial" "$work/debs"
# apt with a state of its own: the machine's package lists and caches are left as they are.
apt=(apt-get -q -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work"
     -o "Dir::Cache::Archives=$work/archives" -o Debug::NoLocking=1
     -o APT::Sandbox::User=root)
"${apt[@]}" update >"$work/update.log" 2>&1 || { cat "$work/update.log" >&2; exit 1; }
(cd "$work/debs" && "${apt[@]}" download "${packages[@]}" >"$work/download.log" 2>&1) \
  || { cat "$work/download.log" >&2; exit 1; }
mkdir -p "$work/root"
for deb in "$work"/debs/*.deb; do
  dpkg-deb -x "$deb" "$work/root"
  dpkg-deb -W --showformat='${Package}=${Version}\n' "$deb" >> "$work/root/VERSIONS"
done
rm -rf "$work/root/usr/share/doc" "$work/root/usr/share/man"
mv "$work/root" "$root"
rm -rf "$work"
echo "debs: unpacked in $((SECONDS - start))s: $(paste -sd, "$root/VERSIONS")" >&2
echo "$root"
