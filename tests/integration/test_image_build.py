"""`make image`'s image, as built (cached: seconds when nothing changed), read layer by layer."""

from __future__ import annotations

import importlib.util
import json
import struct
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hack.stack.operator import build_image

SITE = "opt/venv/lib/python3.11/site-packages"
MAX_BYTES = 300 * 10**6  # the target: at most 300 MB uncompressed


@pytest.fixture(scope="module")
def image() -> tuple[Path, str]:
    return build_image()


def _blobs(archive: Path) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    """The archive's manifest, its config, and the layer blob names, oldest first."""
    with tarfile.open(archive) as tar:
        def read(name: str) -> Any:
            member = tar.extractfile(name)
            assert member is not None
            return json.load(member)

        index = read("index.json")
        (descriptor,) = index["manifests"]
        manifest = read(f"blobs/sha256/{descriptor['digest'].split(':')[1]}")
        config = read(f"blobs/sha256/{manifest['config']['digest'].split(':')[1]}")
    layers = [f"blobs/sha256/{layer['digest'].split(':')[1]}" for layer in manifest["layers"]]
    return manifest, config, layers


def _entries(archive: Path) -> Iterator[tuple[tarfile.TarFile, tarfile.TarInfo]]:
    _, _, layers = _blobs(archive)
    with tarfile.open(archive) as outer:
        for name in layers:
            blob = outer.extractfile(name)
            assert blob is not None
            with tarfile.open(fileobj=blob) as layer:
                for entry in layer:
                    yield layer, entry


def test_the_image_is_named_runs_as_nonroot_and_is_small(image: tuple[Path, str]) -> None:
    archive, ref = image
    manifest, config, _ = _blobs(archive)
    assert config["config"]["User"] == "65532:65532"
    assert config["config"]["Env"][0].startswith("PATH=/opt/venv/bin:")
    size = sum(layer["size"] for layer in manifest["layers"])
    assert size <= MAX_BYTES, f"{size / 1e6:.0f} MB"
    with tarfile.open(archive) as tar:
        index = json.load(tar.extractfile("index.json"))
    name = index["manifests"][0]["annotations"]["io.containerd.image.name"]
    assert name == f"docker.io/library/{ref}"


def test_the_image_holds_the_project_and_nothing_it_does_not_need(
        image: tuple[Path, str]) -> None:
    entries = [entry for _, entry in _entries(image[0])]
    names = {entry.name for entry in entries}
    for command in ("vmgroup-webhook", "vmgroup-controller"):
        assert f"opt/venv/bin/{command}" in names
    for package in ("vmgroup_api", "kubekit", "webhook", "controller", "initializers"):
        assert f"{SITE}/{package}/__init__.py" in names
    unwanted = ("pip/", "setuptools/", "kubernetes/aio/", "usr/share/man/", "usr/share/locale/",
                "usr/bin/apt", "usr/bin/pip")
    assert not [n for n in names if any(u in n for u in unwanted)]
    # of the documentation, only the licences (copyright files) stay
    assert {e.name.rsplit("/", 1)[1] for e in entries
            if e.isfile() and e.name.startswith("usr/share/doc/")} == {"copyright"}
    assert not any(n.startswith(("hack/", "tests/", "bench/")) for n in names)


def test_no_setuid_program_and_nothing_owned_by_the_runtime_user(
        image: tuple[Path, str]) -> None:
    for _, entry in _entries(image[0]):
        if entry.isfile():  # (setgid directories, such as var/local, only pass on a group)
            assert not entry.mode & 0o6000, entry.name
        assert entry.uid != 65532, entry.name


def test_every_module_has_byte_code_checked_by_hash(image: tuple[Path, str]) -> None:
    """A timestamp-checked .pyc on a read-only root file system is recompiled in memory by every
    process at every start (gunicorn workers doubled in size): every .py has a checked-hash
    .pyc of this Python, matching its source."""
    tag = "cpython-311"
    sources: dict[str, bytes] = {}
    compiled: dict[str, bytes] = {}
    for layer, entry in _entries(image[0]):
        if not entry.isfile() or not entry.name.startswith((SITE, "usr/lib/python3.11/")):
            continue
        if entry.name.endswith(".py"):
            sources[entry.name] = layer.extractfile(entry).read()
        elif entry.name.endswith(f".{tag}.pyc"):
            compiled[entry.name] = layer.extractfile(entry).read(16)
    assert len(sources) > 1000
    stale = []
    for path, source in sources.items():
        directory, _, file = path.rpartition("/")
        header = compiled.get(f"{directory}/__pycache__/{file[:-3]}.{tag}.pyc")
        if header is None:
            stale.append(f"{path}: no byte-code")
            continue
        (flags,) = struct.unpack("<I", header[4:8])
        if flags != 0b11:  # hash-based (bit 0), checked against the source (bit 1)
            stale.append(f"{path}: flags {flags:#b}")
        elif header[8:16] != importlib.util.source_hash(source):
            stale.append(f"{path}: hash does not match the source")
    assert stale == []
