"""Bring what the comparison needs onto a fresh machine: Debian's Prometheus and PostgreSQL, and pip packages.

Packages are installed only when missing. The Debian packages are installed with service starts
blocked (a ``policy-rc.d`` that refuses, removed afterwards if we made it), so no Prometheus is left
on :9090 and no PostgreSQL on :5432: the benchmark starts its own on free loopback ports.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import shutil
import subprocess
import sys

__all__ = ["ensure_tools"]

PIP = {"psycopg": "psycopg[binary]", "matplotlib": "matplotlib", "sklearn": "scikit-learn"}
POLICY = "/usr/sbin/policy-rc.d"


def _missing_apt() -> list[str]:
    missing = []
    if not (shutil.which("prometheus") or os.path.exists("/usr/bin/prometheus")):
        missing.append("prometheus")
    if not (shutil.which("pg_ctl") or glob.glob("/usr/lib/postgresql/*/bin/pg_ctl")):
        missing.append("postgresql")
    return missing


def _apt_install(packages: list[str]) -> None:
    if os.geteuid() != 0:
        names = " ".join(packages)
        raise SystemExit(f"missing {names}: run as root, or `sudo apt-get install -y {names}`")
    made_policy = not os.path.exists(POLICY)
    if made_policy:
        with open(POLICY, "w") as f:
            f.write("#!/bin/sh\n# written by bench/compare/install.py while it installs; removed after\nexit 101\n")
        os.chmod(POLICY, 0o755)
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], check=True, env=env)
    finally:
        if made_policy:
            os.remove(POLICY)


def ensure_tools() -> list[str]:
    """Install whatever is missing; returns what was installed."""
    installed = []
    apt = _missing_apt()
    if apt:
        print(f"installing Debian packages: {' '.join(apt)}", flush=True)
        _apt_install(apt)
        installed += apt
    pip = [spec for module, spec in PIP.items() if importlib.util.find_spec(module) is None]
    if pip:
        print(f"installing from PyPI: {' '.join(pip)}", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *pip], check=True)
        importlib.invalidate_caches()
        installed += pip
    return installed
