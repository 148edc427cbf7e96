#!/bin/sh
# mmdebstrap --customize-hook for the base layer: $1 is the new root file system.
set -eu
R="$1"
umask 022
# The chart's securityContext uid/gid; it owns nothing in the image.
grep -q '^nonroot:' "$R/etc/passwd" || echo 'nonroot:x:65532:65532:nonroot:/nonexistent:/usr/sbin/nologin' >> "$R/etc/passwd"
grep -q '^nonroot:' "$R/etc/group"  || echo 'nonroot:x:65532:' >> "$R/etc/group"
# Byte-code that stays valid whatever the files' mtimes (the layer pins them): checked-hash, and
# forced (-f), or compileall keeps Debian's timestamp-based .pyc files. A stale .pyc on a read-only
# root file system is recompiled in memory by every process, every start (workers doubled in size).
chroot "$R" /usr/bin/python3 -m compileall -q -f -j0 --invalidation-mode checked-hash \
    /usr/lib/python3.11 /usr/lib/python3/dist-packages >/dev/null
# Logs and backups (their timestamps would make the layer differ build to build). Not $R/tmp nor
# $R/var/*/apt: mmdebstrap keeps its APT_CONFIG in $R/tmp until it has finished, and without it
# its last steps would run against the host's apt. build.sh removes them afterwards.
rm -rf "$R"/var/log/* "$R"/var/cache/debconf/*-old "$R"/var/lib/dpkg/*-old \
    "$R"/var/cache/ldconfig/aux-cache "$R"/etc/machine-id "$R"/var/lib/dbus/machine-id
# No setuid/setgid programs: nothing in the image may gain privileges.
find "$R" -xdev -type f -perm /6000 -exec chmod ug-s {} +
