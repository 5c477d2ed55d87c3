"""The header of every recorded benchmark: when, on what machine, at which commit."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def commit() -> str:
    try:
        out = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def header(what: str) -> str:
    """A markdown header naming the run: command, date, machine, load at the start, commit."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"# {what}\n\n"
            f"- date: {datetime.datetime.now().astimezone().isoformat(timespec='minutes')}\n"
            f"- machine: {cpu_model()}, {os.cpu_count()} CPUs, no GPU used; load average at start {load:.1f}\n"
            f"- commit: {commit()}\n\n")
