"""Helpers of the interruption tests: ``population.py`` as a subprocess, and zoo comparisons."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def population(out, *extra, env, args, fault=None, **popen) -> subprocess.Popen:
    """Starts ``population.py args --out out extra``; returns the Popen.

    ``fault``: ``"POINT:N:ACTION"``, run through ``tests/faulty_population.py`` (see there).
    """
    script = ["experiments/population.py"] if fault is None else ["tests/faulty_population.py", "--fault", fault]
    return subprocess.Popen(
        [sys.executable, str(ROOT / script[0]), *script[1:], *args, "--out", str(out), *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, **popen,
    )


def finish(process: subprocess.Popen, timeout: float = 900) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def committed_members(path: Path) -> list[int]:
    """Member ids of every committed part on disk (a member twice would show twice)."""
    ids = []
    for sidecar in path.glob("snapshots/*/part-*.rows-*.json"):
        if sidecar.with_name(sidecar.name.split(".")[0]).is_dir():
            ids += [row["member"] for row in json.loads(sidecar.read_text())["members"]]
    return ids


def assert_same_zoo(zoo, reference) -> None:
    """Same members, tables and every snapshot of every member, bitwise."""
    where = ["part", "row"]
    pd.testing.assert_frame_equal(zoo.members.drop(columns=where), reference.members.drop(columns=where))
    pd.testing.assert_frame_equal(zoo.curves, reference.curves)
    for member in reference.members.index:
        for snapshot in range(1, reference.num_snapshots + 1):
            np.testing.assert_array_equal(zoo.flat([member], snapshot), reference.flat([member], snapshot))
            for a, b in zip(
                jax.tree.leaves(zoo.batch_stats([member], snapshot)),
                jax.tree.leaves(reference.batch_stats([member], snapshot)),
            ):
                np.testing.assert_array_equal(a, b)


def wait_for(condition, process: subprocess.Popen, timeout: float = 600) -> bool:
    """Polls ``condition`` every 10 ms while ``process`` runs; True once it holds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end and process.poll() is None:
        if condition():
            return True
        time.sleep(0.01)
    return False
