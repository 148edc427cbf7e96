"""The image and the chart agree (no Docker needed): the commands the chart runs are console
scripts of the package, the image holds every package, runs as the chart's user and exposes
the chart's ports."""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

import yaml

from hack.stack import REPO

DOCKERFILE = (REPO / "Dockerfile").read_text()
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
CHART = REPO / "charts" / "vmgroup-operator"
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())


def test_every_command_the_chart_runs_is_a_console_script_of_the_package() -> None:
    commands = {command for template in (CHART / "templates").glob("*.yaml")
                for command in re.findall(r"command: \[([\w-]+)\]", template.read_text())}
    assert commands == {"vmgroup-webhook", "vmgroup-controller"}
    assert commands <= set(PROJECT["project"]["scripts"])


def test_the_image_holds_every_package_of_the_project() -> None:
    packages = {p.rstrip("*") for p in PROJECT["tool"]["setuptools"]["packages"]["find"]["include"]}
    copied = set(re.findall(r"^COPY (\w+)/ \1/$", DOCKERFILE, re.MULTILINE))
    let_in = set((REPO / ".dockerignore").read_text().split())
    assert packages == copied
    assert {f"!{package}/" for package in packages} <= let_in
    # pip builds the project from these, so they are copied (and let in) too.
    for name in ("pyproject.toml", PROJECT["project"]["readme"], "constraints.txt"):
        assert re.search(rf"^COPY .*\b{re.escape(name)}\b", DOCKERFILE, re.MULTILINE), name
        assert f"!{name}" in let_in
    for entry_point in PROJECT["project"]["scripts"].values():
        assert entry_point.split(".")[0] in packages


def test_the_image_runs_as_the_charts_user_on_the_charts_ports() -> None:
    pod = VALUES["podSecurityContext"]
    (user,) = re.findall(r"^USER (\S+)$", DOCKERFILE, re.MULTILINE)
    assert user == f"{pod['runAsUser']}:{pod['runAsGroup']}"
    (exposed,) = re.findall(r"^EXPOSE (.+)$", DOCKERFILE, re.MULTILINE)
    assert exposed.split() == [str(VALUES["webhook"]["port"]), str(VALUES["controller"]["port"])]


def test_the_images_python_is_one_the_project_supports() -> None:
    minimum = re.fullmatch(r">=(\d+)\.(\d+)", PROJECT["project"]["requires-python"])
    assert minimum
    bases = re.findall(r"^FROM python:(\d+)\.(\d+)", DOCKERFILE, re.MULTILINE)
    assert bases
    for major, minor in bases:
        assert (int(major), int(minor)) >= (int(minimum[1]), int(minimum[2]))


# --- the Dockerfile and `make image` (hack/image/build.sh) describe one image -----------------

BUILD_SH = (REPO / "hack" / "image" / "build.sh").read_text()


def _make_image_config() -> dict[str, Any]:
    match = re.search(r"<<'JSON'\n(.*?)\nJSON\n", BUILD_SH, re.DOTALL)
    assert match, "build.sh writes the image config from a JSON heredoc"
    return dict(json.loads(match[1]))


def _dockerfile_env() -> dict[str, str]:
    (block,) = re.findall(r"^ENV ((?:.*\\\n)*.*)$", DOCKERFILE, re.MULTILINE)
    return dict(pair.split("=", 1) for pair in block.replace("\\\n", " ").split())


def test_both_recipes_run_the_same_user_ports_command_and_environment() -> None:
    config = _make_image_config()
    (user,) = re.findall(r"^USER (\S+)$", DOCKERFILE, re.MULTILINE)
    assert config["User"] == user
    (exposed,) = re.findall(r"^EXPOSE (.+)$", DOCKERFILE, re.MULTILINE)
    assert sorted(config["ExposedPorts"]) == sorted(f"{p}/tcp" for p in exposed.split())
    (cmd,) = re.findall(r"^CMD (\[.*\])$", DOCKERFILE, re.MULTILINE)
    assert config["Cmd"] == json.loads(cmd)
    env = dict(e.split("=", 1) for e in config["Env"])
    for name, value in _dockerfile_env().items():
        if name == "PATH":
            assert env["PATH"].startswith("/opt/venv/bin:")
        else:
            assert env[name] == value, name


def test_both_recipes_use_python_3_11_and_the_same_venv_treatment() -> None:
    # Debian bookworm's python3 is 3.11, the Dockerfile's base too; both install into /opt/venv.
    assert re.search(r"^suite=bookworm$", BUILD_SH, re.MULTILINE)
    assert re.findall(r"^FROM python:(\d+\.\d+)-slim-(\w+)", DOCKERFILE, re.MULTILINE) == [
        ("3.11", "bookworm"), ("3.11", "bookworm")]
    for recipe in (DOCKERFILE, BUILD_SH):
        assert "/opt/venv/lib/python3.11/site-packages" in recipe
        assert "-c constraints.txt" in recipe or "-c /tmp/build/constraints.txt" in recipe
        # byte-code that never goes stale on a read-only root, the unused asyncio client dropped
        assert "--invalidation-mode checked-hash" in recipe
        assert re.search(r"rm -rf \S*/kubernetes/aio", recipe)
