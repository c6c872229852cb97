"""Mixed architectures: one population trained with each padding policy, in one run.

    python experiments/padding_bench.py                  # the issue's 64-member Fashion-MNIST population
    python experiments/padding_bench.py --members 16 --max-images 500 --epochs 2   # a quick look

Each policy (``--pad-architectures auto``, ``all``, ``none``) runs
``experiments/population.py`` as a subprocess on the same sampled population (same
seed) with a fresh, empty compilation cache, so compile times are real. Reported per
policy, from the zoo's zoo.json and the wall clock: programs compiled, compile
seconds, total seconds (process start to exit), member-steps per second, the fraction
of computed training FLOPs that were members' own (not padding), and what ``auto``'s
cost model predicted. Runs on whatever backend JAX finds, so the same command
measures an accelerator.
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
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
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
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--members", type=int, default=64)
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--max-images", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--policies", default=",".join(POLICIES), help="comma-separated, run in this order")
    p.add_argument("--out", default="runs/padding_bench", help="folder for the zoos and results.json")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    from nwsjax.data import load_dataset

    load_dataset(args.dataset)  # prepared once into the cache, so no policy's time includes it
    load = os.getloadavg()
    rows = []
    for policy in args.policies.split(","):
        rows.append(run_policy(policy, args, out))
        row = rows[-1]
        print(f"{policy:>5}: {row['programs']:3d} programs ({row['padded_programs']} padded), compile "
              f"{row['compile_s']:7.1f} s, total {row['total_s']:7.1f} s, "
              f"{row['member_steps'] / row['train_s']:6.1f} member-steps/s, "
              f"useful FLOPs {100 * row['useful_flop_fraction']:5.1f}%", flush=True)
    fastest = min(r["total_s"] for r in rows)
    for r in rows:
        print(f"{r['policy']:>5}: {r['total_s'] / fastest:5.2f}x the fastest")
    import jax

    record = {"rows": rows, "args": vars(args), "load_before": load, "load_after": os.getloadavg(),
              "device": str(jax.devices()[0]), "cores": os.cpu_count(), "jax": jax.__version__,
              "python": platform.python_version()}
    (out / "results.json").write_text(json.dumps(record, indent=1))
    print(f"load average before {load[0]:.2f}, after {record['load_after'][0]:.2f}; results in {out / 'results.json'}")


if __name__ == "__main__":
    main()
