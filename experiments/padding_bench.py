"""Mixed architectures: one population trained with each padding policy, in one run.

    python experiments/padding_bench.py                  # the issue's 64-member Fashion-MNIST population
    python experiments/padding_bench.py --members 16 --max-images 1000 --epochs 2   # a quick look
    python experiments/padding_bench.py --resume         # goes on after the policies already measured

Each policy (``--pad-architectures auto``, ``all``, ``none``) runs
``experiments/population.py`` as a subprocess on the same sampled population (same
seed) with a fresh, empty compilation cache, so compile times are real. Reported per
policy, from the zoo's zoo.json and the wall clock: programs compiled, compile
seconds, total seconds (process start to exit), member-steps per second, the fraction
of computed training FLOPs that were members' own (not padding), and what ``auto``'s
cost model predicted. Runs on whatever backend JAX finds, so the same command
measures an accelerator. Each policy's row is saved to ``results.json`` as soon as it is
measured; ``--resume`` keeps the rows of the same settings and runs only the others
(a full CPU run of the 64-member population takes over an hour).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = str(ROOT / "experiments" / "population.py")
POLICIES = ("auto", "all", "none")


def run_policy(policy: str, args, out: Path) -> dict:
    """Trains the population with ``policy``; returns its measurements."""
    zoo = out / policy
    cache = tempfile.mkdtemp(prefix="nwsjax-xla-")
    command = [sys.executable, SCRIPT, "--members", str(args.members), "--dataset", args.dataset,
               "--max-images", str(args.max_images), "--epochs", str(args.epochs), "--seed", str(args.seed),
               "--pad-architectures", policy, "--out", str(zoo), "--overwrite", "--quiet"]
    env = dict(os.environ, NWSJAX_COMPILE_CACHE=cache)
    loads, stop = [], threading.Event()
    sampler = threading.Thread(target=sample_load, args=(loads, stop), daemon=True)
    sampler.start()
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    shutil.rmtree(cache, ignore_errors=True)
    if done.returncode != 0:
        sys.exit(f"{policy}: population.py failed:\n{done.stderr[-2000:]}")
    info = json.loads((zoo / "zoo.json").read_text())
    report = info["report"] if "report" in info else info
    return {
        "policy": policy,
        "programs": len(report["compile_seconds"]),
        "padded_programs": sum(label.startswith("pad-") for label in report["compile_seconds"]),
        "compile_s": sum(report["compile_seconds"].values()),
        "train_s": report["seconds"],
        "total_s": seconds,
        "member_steps": report["member_steps"],
        "useful_flop_fraction": report["useful_flop_fraction"],
        "summary": done.stdout.strip().splitlines()[-4:],
        "load_mean": sum(loads) / max(len(loads), 1),
        "load_max": max(loads, default=0.0),
    }


def sample_load(loads: list, stop: threading.Event, every_s: float = 30.0) -> None:
    """Appends the 1-minute load average every ``every_s`` seconds until ``stop`` is set."""
    while not stop.wait(every_s):
        loads.append(os.getloadavg()[0])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, default=64)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--max-images", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--policies", default=",".join(POLICIES), help="comma-separated, run in this order")
    p.add_argument("--out", default="runs/padding_bench", help="folder for the zoos and results.json")
    p.add_argument("--resume", action="store_true", help="keep the policies results.json already holds")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k not in ("policies", "out", "resume")}
    saved = json.loads((out / "results.json").read_text()) if args.resume and (out / "results.json").exists() else {}
    if saved and saved.get("settings") != settings:
        sys.exit(f"--resume: {out / 'results.json'} was measured with {saved.get('settings')}, not {settings}")
    sys.path.insert(0, str(ROOT))
    from nwsjax.data import load_dataset

    load_dataset(args.dataset)  # prepared once into the cache, so no policy's time includes it
    import jax

    record = {"settings": settings, "rows": [], "device": str(jax.devices()[0]), "cores": os.cpu_count(),
              "jax": jax.__version__, "python": platform.python_version(), **saved}
    rows = record["rows"]
    for policy in args.policies.split(","):
        if any(r["policy"] == policy for r in rows):
            row = next(r for r in rows if r["policy"] == policy)
        else:
            load = os.getloadavg()
            row = dict(run_policy(policy, args, out), load_before=load[0], load_after=os.getloadavg()[0])
            rows.append(row)
            (out / "results.json").write_text(json.dumps(record, indent=1))
        print(f"{policy:>5}: {row['programs']:3d} programs ({row['padded_programs']} padded), compile "
              f"{row['compile_s']:7.1f} s, total {row['total_s']:7.1f} s, "
              f"{row['member_steps'] / row['train_s']:6.1f} member-steps/s, "
              f"useful FLOPs {100 * row['useful_flop_fraction']:5.1f}%", flush=True)
    fastest = min(r["total_s"] for r in rows)
    for r in rows:
        during = f", mean {r['load_mean']:.1f}, max {r['load_max']:.1f} during" if "load_mean" in r else ""
        print(f"{r['policy']:>5}: {r['total_s'] / fastest:5.2f}x the fastest "
              f"(load average {r['load_before']:.1f} before, {r['load_after']:.1f} after{during})")
    print(f"results in {out / 'results.json'}")


if __name__ == "__main__":
    main()
