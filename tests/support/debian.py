"""Real programs the tests drive (nginx, Chromium), from Debian's packages: found on the
machine, installed with apt-get when missing and possible, or else a skip, which becomes a
failure where the environment requires the program (CI sets AGORA_TEST_<NAME>_REQUIRED=1)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable

import pytest


def _as_root() -> list[str] | None:
    """The prefix that runs a command as root: none when root already, ``sudo -n`` when sudo
    needs no password; None when neither (nothing is ever prompted for)."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo"):
        probe = subprocess.run(["sudo", "-n", "true"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return ["sudo", "-n", "env", "DEBIAN_FRONTEND=noninteractive"]
    return None


def ensure_program(package: str, find: Callable[[], str | None], required_env: str) -> str:
    """The program's path (``find()``); installs Debian's ``package`` when it is missing and
    apt-get can (retried once after ``apt-get update``). Missing and not installable: a failure
    when ``required_env`` is "1", else a skip."""
    found = find()
    if found:
        return found
    problem = f"{package} is not installed"
    sudo = _as_root()
    if shutil.which("apt-get") and sudo is not None:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = [*sudo, "apt-get", "install", "-y", "--no-install-recommends", package]
        for attempt in (install, [*sudo, "apt-get", "update"], install):
            done = subprocess.run(attempt, env=env, capture_output=True, text=True, timeout=900)
            if attempt is install and done.returncode == 0:
                break
        found = find()
        if found:
            return found
        problem = f"`apt-get install {package}` failed: {done.stderr[-1000:]}"
    if os.environ.get(required_env) == "1":
        pytest.fail(f"{problem} ({required_env}=1)")
    pytest.skip(f"{problem}; install Debian's {package} (apt-get install {package}) to run these")
