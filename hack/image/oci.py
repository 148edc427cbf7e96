"""Deterministic layer tars and OCI image layouts, with the standard library only.

No Docker and no registry here: `make image` and the local node's pause image are written by
this module and imported into containerd (`ctr images import`), which reads an OCI layout tar.

    python -m hack.image.oci layer ROOT OUT.tar [--subtree opt/venv]
    python -m hack.image.oci image OUTDIR --layer L.tar ... --config CONFIG.json --ref NAME:TAG
                                   [--history TEXT ...] [--archive OUT.oci.tar]

Layers are reproducible: entries sorted by path, every mtime the same (SOURCE_DATE_EPOCH, else
0), numeric owners as on disk with no names, hard links kept as links, nothing of dev/, proc/ or
sys/, no sockets; a file with extended attributes is refused rather than silently changed. An
image's digest therefore depends on its content only.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SKIP_CONTENTS = frozenset({"dev", "proc", "sys"})
LAYER_MEDIA = "application/vnd.oci.image.layer.v1.tar"
MANIFEST_MEDIA = "application/vnd.oci.image.manifest.v1+json"


def _epoch() -> int:
    return int(os.environ.get("SOURCE_DATE_EPOCH", "0"))


def _walk(root: Path, rel: str = "") -> Iterator[str]:
    """Relative paths below `root/rel`, depth first, siblings in byte order."""
    with os.scandir(root / rel if rel else root) as entries:
        ordered = sorted(entries, key=lambda e: os.fsencode(e.name))
    for entry in ordered:
        path = f"{rel}/{entry.name}" if rel else entry.name
        yield path
        if entry.is_dir(follow_symlinks=False) and path not in SKIP_CONTENTS:
            yield from _walk(root, path)


def _tarinfo(root: Path, rel: str, mtime: int,
             links: dict[tuple[int, int], str]) -> tuple[tarfile.TarInfo, Path | None] | None:
    """The tar entry for `rel` and the file to copy its data from (None: no data, or skip)."""
    full = root / rel
    st = os.lstat(full)
    if os.listxattr(full, follow_symlinks=False):
        raise ValueError(f"{rel} has extended attributes, which a layer here cannot carry")
    info = tarfile.TarInfo(rel)
    info.mode, info.uid, info.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    info.mtime = mtime
    info.uname = info.gname = ""
    data = None
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        info.type, info.linkname = tarfile.SYMTYPE, os.readlink(full)
    elif stat.S_ISREG(st.st_mode):
        key = (st.st_dev, st.st_ino)
        if st.st_nlink > 1 and key in links:
            info.type, info.linkname = tarfile.LNKTYPE, links[key]
        else:
            links[key] = rel
            info.size, data = st.st_size, full
    elif stat.S_ISFIFO(st.st_mode):
        info.type = tarfile.FIFOTYPE
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        info.type = tarfile.CHRTYPE if stat.S_ISCHR(st.st_mode) else tarfile.BLKTYPE
        info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
    else:  # a socket: nothing a container could use
        return None
    return info, data


def write_layer(root: Path, out: Path, *, subtree: str | None = None,
                mtime: int | None = None) -> None:
    """One layer of the tree at `root` (or of `subtree` and its parent directories only)."""
    root = root.resolve()
    mtime = _epoch() if mtime is None else mtime
    if subtree:
        parts = subtree.strip("/").split("/")
        paths = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        paths += list(_walk(root, paths[-1]))
    else:
        paths = list(_walk(root))
    links: dict[tuple[int, int], str] = {}
    partial = out.with_name(out.name + ".partial")
    with tarfile.open(partial, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for rel in paths:
            if (entry := _tarinfo(root, rel, mtime, links)) is None:
                continue
            info, data = entry
            if data is None:
                tar.addfile(info)
            else:
                with data.open("rb") as f:
                    tar.addfile(info, f)
    partial.replace(out)  # a killed build leaves no half layer under the final name


@dataclass(frozen=True)
class File:
    """A file of a layer built from memory (a small image: the pause binary, /etc/passwd)."""

    path: str
    data: bytes
    mode: int = 0o644


def write_layer_of(files: Sequence[File], out: Path, *, mtime: int | None = None) -> None:
    """A layer holding `files` and their parent directories."""
    mtime = _epoch() if mtime is None else mtime
    dirs = sorted({"/".join(f.path.split("/")[:i]) for f in files
                   for i in range(1, f.path.count("/") + 1)} | {"tmp"})
    with tarfile.open(out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mtime = tarfile.DIRTYPE, mtime
            info.mode = 0o1777 if d == "tmp" else 0o755
            tar.addfile(info)
        for f in sorted(files, key=lambda f: f.path):
            info = tarfile.TarInfo(f.path)
            info.size, info.mode, info.mtime = len(f.data), f.mode, mtime
            tar.addfile(info, io.BytesIO(f.data))


def _digest_of(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest(), path.stat().st_size


def _json(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def _put(blobs: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def full_name(ref: str) -> str:
    """The name containerd and the kubelet know `ref` by (`name:tag` is docker.io/library/...)."""
    name = ref.rpartition(":")[0]
    domain = name.split("/")[0]
    if "/" in name and ("." in domain or ":" in domain or domain == "localhost"):
        return ref
    return f"docker.io/{'' if '/' in name else 'library/'}{ref}"


def write_image(outdir: Path, layers: Sequence[Path], config: dict[str, Any], ref: str, *,
                history: Sequence[str] = (), archive: Path | None = None,
                mtime: int | None = None) -> str:
    """An OCI layout of `layers` (uncompressed) under `outdir`, named `ref`; with `archive`, the
    same as one tar for `ctr images import`. Returns the manifest's digest."""
    mtime = _epoch() if mtime is None else mtime
    shutil.rmtree(outdir, ignore_errors=True)
    blobs = outdir / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    created = datetime.fromtimestamp(mtime, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    descriptors = []
    for layer in layers:
        digest, size = _digest_of(layer)
        try:
            os.link(layer, blobs / digest)  # no copy within one file system (the cache)
        except OSError:
            shutil.copyfile(layer, blobs / digest)
        descriptors.append({"mediaType": LAYER_MEDIA, "digest": f"sha256:{digest}", "size": size})
    history = [*history, *[""] * (len(layers) - len(history))]
    image_config = {
        "created": created, "architecture": "amd64", "os": "linux", "config": config,
        "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in descriptors]},
        "history": [{"created": created, "created_by": h} for h in history],
    }
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           **_put(blobs, _json(image_config))},
                "layers": descriptors}
    manifest_ref = _put(blobs, _json(manifest))
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [{"mediaType": MANIFEST_MEDIA, **manifest_ref,
                            "platform": {"architecture": "amd64", "os": "linux"},
                            "annotations": {"io.containerd.image.name": full_name(ref),
                                            "org.opencontainers.image.ref.name":
                                                ref.rpartition(":")[2]}}]}
    (outdir / "index.json").write_bytes(_json(index))
    (outdir / "oci-layout").write_bytes(_json({"imageLayoutVersion": "1.0.0"}))
    if archive is not None:
        write_layer(outdir, archive, mtime=mtime)  # the same deterministic writer
    return str(manifest_ref["digest"])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hack.image.oci", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    layer = commands.add_parser("layer", help="one layer from a directory")
    layer.add_argument("root", type=Path)
    layer.add_argument("out", type=Path)
    layer.add_argument("--subtree")
    image = commands.add_parser("image", help="an OCI layout (and archive) of layers")
    image.add_argument("outdir", type=Path)
    image.add_argument("--layer", type=Path, action="append", required=True)
    image.add_argument("--history", action="append", default=[])
    image.add_argument("--config", type=Path, required=True)
    image.add_argument("--ref", required=True)
    image.add_argument("--archive", type=Path)
    args = parser.parse_args(argv)
    if args.command == "layer":
        write_layer(args.root, args.out, subtree=args.subtree)
    else:
        print(write_image(args.outdir, args.layer, json.loads(args.config.read_text()), args.ref,
                          history=args.history, archive=args.archive))


if __name__ == "__main__":
    main()
