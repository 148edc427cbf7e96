"""The image and the chart agree (no Docker needed): the commands the chart runs are console
scripts of the package, the image holds every package, runs as the chart's user and exposes
the chart's ports."""

from __future__ import annotations

import re
import tomllib

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
