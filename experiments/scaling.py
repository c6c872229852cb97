"""How the trainer uses a machine's cores: one population trained four ways, timed whole.

    python experiments/scaling.py                     # 16 fixed-architecture members on digits, 5 epochs

Every way runs ``experiments/population.py`` as a subprocess on the same population
(same seed, so the same members) and is timed from start to exit, startup, data
loading and snapshot writes included; each runs once to fill a fresh compilation
cache, then again to be timed, so compiling is left out:

  1 core                 pinned to one core, one device
  2 cores, threads       both cores, one device: XLA splits each kernel over threads
  2 cores, devices       both cores, two virtual devices (``--devices 2``): each device
                         trains its half of the slots
  2 processes            two processes pinned to one core each, joined with JAX's
                         multi-process runtime on loopback (``--coordinator``): each
                         trains its round-robin half of every cohort

Rate = member-steps of the zoo (sum of the members table's ``steps``) per second of
wall time. The zoos are also checked equal where they must be (1 core vs 2 processes).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "experiments" / "population.py")


def population_args(members: int, epochs: int) -> list[str]:
    return ["--members", str(members), "--fixed-architecture", "--set", "batch_size=64", "--dataset", "digits",
            "--epochs", str(epochs), "--min-epochs", str(epochs), "--snapshots", "3", "--quiet", "--seed", "5"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_way(way: str, args: list[str], out: Path, env: dict) -> float:
    """Runs one way to completion; returns its wall seconds."""
    cores = sorted(os.sched_getaffinity(0))
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    if way == "2 processes":
        address = f"127.0.0.1:{free_port()}"
        processes = [
            subprocess.Popen(["taskset", "-c", str(cores[i]), sys.executable, SCRIPT, *args, "--out", str(out),
                              "--coordinator", address, "--num-processes", "2", "--process-id", str(i)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(2)
        ]
        results = [p.communicate() for p in processes]
        codes = [p.returncode for p in processes]
    else:
        pin = ["taskset", "-c", str(cores[0])] if way == "1 core" else []
        extra = ["--devices", "2"] if way == "2 cores, devices" else []
        process = subprocess.run([*pin, sys.executable, SCRIPT, *args, *extra, "--out", str(out)],
                                 env=env, capture_output=True, text=True)
        results, codes = [(process.stdout, process.stderr)], [process.returncode]
    seconds = time.perf_counter() - start
    if any(codes):
        sys.exit(f"error: {way} failed: {results[0][1][-2000:]}")
    return seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=16)
    p.add_argument("--epochs", type=int, default=5)
    args = p.parse_args(argv)
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("error: needs at least 2 cores")
    from nwsjax.zoo import open_zoo

    ways = ["1 core", "2 cores, threads", "2 cores, devices", "2 processes"]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, NWSJAX_COMPILE_CACHE=str(Path(tmp) / "xla"), JAX_PLATFORMS="cpu")
        for way in ways:
            out = Path(tmp) / way.replace(" ", "-").replace(",", "")
            run_way(way, population_args(args.members, args.epochs), out, env)  # fills the compilation cache
            seconds = run_way(way, population_args(args.members, args.epochs), out, env)
            steps = int(open_zoo(out).members.steps.sum())
            rows[way] = (seconds, steps)
            print(f"  {way}: {steps / seconds:.1f} member-steps/s", file=sys.stderr, flush=True)
        same = (open_zoo(Path(tmp) / "1-core").flat(range(args.members)) ==
                open_zoo(Path(tmp) / "2-processes").flat(range(args.members))).all()
    base = rows["1 core"][1] / rows["1 core"][0]
    print(f"command: python experiments/scaling.py {' '.join(sys.argv[1:] if argv is None else argv)}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"{args.members} fixed-architecture members, batch 64, {args.epochs} epochs on digits, compile cached")
    print(f"{'way':<20}{'seconds':>9}{'member-steps/s':>16}{'x 1 core':>10}")
    for way, (seconds, steps) in rows.items():
        print(f"{way:<20}{seconds:>9.1f}{steps / seconds:>16.1f}{steps / seconds / base:>10.2f}")
    print(f"1-core zoo and 2-process zoo bitwise equal: {bool(same)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
