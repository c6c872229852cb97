"""Meta-training throughput: slices per second with and without data loading.

Example::

    python experiments/meta_bench.py --zoo runs/fmnist --model dmc,set --slice-length 5000

For each model, over every network of the zoo at the chosen snapshots, prints seconds
per step and slices per second (for the units model: networks per second) of

* pipeline (cold): one epoch of batches read from the zoo, no training;
* pipeline (warm): one more epoch, vectors served by the cache, no training;
* compute: train steps on one batch already on the device (no data loading);
* train: one epoch of train steps fed by the pipeline, as a meta run trains.

The pipeline is not the bottleneck when "train" is as fast as "compute" (and warm
"pipeline" much faster than both). With ``--torch-python`` (a Python with torch, e.g.
Debian's ``/usr/bin/python3``), the DMC's training step is also timed in plain PyTorch
(``experiments/torch_dmc.py``: the same network, widths and plan, Adam, a batch of the
same stream) on the cores this process may use, and the ratio printed; pin the whole
run with ``taskset -c 0 python experiments/meta_bench.py ...``. Errors print one line
starting "error: " and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile

from nwsjax.cli import ArgumentParser, main_wrapper


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--zoo", required=True, help="zoo folder, NWS CSV files (comma-separated) or Small CNN Zoo folder(s)")
    p.add_argument("--model", default="dmc,set,units", help="comma-separated Flax models: dmc, set, units, global (default %(default)s)")
    p.add_argument("--target", default="optimizer", help="target that labels the batches (default %(default)s)")
    p.add_argument("--snapshots", default=None, help="snapshot range (default: the second half)")
    p.add_argument("--slice-length", type=int, default=5000, help="weights per slice (default %(default)s)")
    p.add_argument("--part", default="whole", help="whole, conv or fc (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=64, help="samples per step (default %(default)s)")
    p.add_argument("--steps", type=int, default=20, help="steps of the compute-only measurement (default %(default)s)")
    p.add_argument("--dmc-width", type=float, default=1.0, help="DMC width multiplier (default %(default)s)")
    p.add_argument("--set-slices", type=int, default=8, help="slices per sample of the set model (default %(default)s)")
    p.add_argument("--cache-mb", type=int, default=1024, help="vector cache budget in MiB (default %(default)s)")
    p.add_argument("--torch-python", default=None, help="a Python with torch: also time the DMC step in PyTorch")
    p.add_argument("--json", default=None, help="also write the numbers to this file")
    return p.parse_args(argv)


def _main(argv=None) -> int:
    args = parse_args(argv)
    import jax
    import numpy as np

    from nwsjax.errors import ConfigError
    from nwsjax.meta import data as D
    from nwsjax.meta import train as T
    from nwsjax.meta.reader import WeightReader
    from nwsjax.meta.run import parse_models
    from nwsjax.formats import open_any

    zoo = open_any(args.zoo)
    target = D.resolve_targets(args.target, zoo)[0][0]
    snapshots = D.parse_snapshots(args.snapshots, zoo.num_snapshots)
    models = parse_models(args.model)
    if "stats" in models:
        raise ConfigError("--model stats: the trees are not trained in steps; benchmark dmc, set or global")
    ids = zoo.members.index.to_numpy()
    members, snaps = np.repeat(ids, len(snapshots)), np.tile(snapshots, len(ids))
    y = D.labels(zoo, target, members, snaps)
    samples = D.Samples(members, snaps, y)
    if target.kind == "regression":
        samples = samples.take(~np.isnan(y))
    options = T.ModelOptions(dmc_width=args.dmc_width, set_slices=args.set_slices)
    settings = T.TrainSettings(batch_size=args.batch_size, progress=False)
    load_at_start = os.getloadavg()
    cores = sorted(os.sched_getaffinity(0))
    print(f"zoo {zoo.path}: {len(ids)} networks x {len(snapshots)} snapshots = {len(samples)} samples; "
          f"target {target.name}; batch {args.batch_size}; backend {jax.default_backend()} "
          f"({platform.processor() or platform.machine()}), cores {','.join(map(str, cores))} of {os.cpu_count()}, "
          f"load average {' '.join(f'{x:.2f}' for x in load_at_start)}; jax {jax.__version__}")
    print(f"{'model':7s} {'slices/step':>11s} {'measure':16s} {'s/step':>8s} {'slices/s':>10s}")
    results = {}
    for model in models:
        spec = T.slice_spec(model, args.slice_length, args.part, options)
        reader = WeightReader(zoo, cache_bytes=args.cache_mb << 20)
        stream = T.make_stream(model, zoo, reader, samples, spec, batch_size=args.batch_size, buffer_bytes=256 << 20)
        module = T.build_model(model, target.num_outputs, options)
        numbers = T.throughput(module, target, stream, settings, args.steps)
        if args.torch_python and model in ("dmc", "global") and target.kind == "classification":
            batch = next(iter(stream.train_epoch(np.random.default_rng(0))))
            torch = _torch_step(args.torch_python, module, batch.x[:, 0], batch.y, len(cores), args.steps)
            numbers["pytorch"] = {"steps": args.steps, "seconds_per_step": torch["step_seconds"],
                                  "slices_per_second": args.batch_size / torch["step_seconds"], "torch": torch["torch"]}
            numbers["compute_over_pytorch"] = torch["step_seconds"] / numbers["compute"]["seconds_per_step"]
        results[model] = {"slice_length": stream.length, "slices_per_step": args.batch_size * spec.count, **numbers}
        for name, label in (("pipeline_cold", "pipeline (cold)"), ("pipeline", "pipeline (warm)"),
                            ("compute", "compute"), ("train", "train"), ("pytorch", "pytorch compute")):
            if name not in numbers:
                continue
            n = numbers[name]
            print(f"{model:7s} {args.batch_size * spec.count:11d} {label:16s} {n['seconds_per_step']:8.4f} "
                  f"{n['slices_per_second']:10.1f}")
        if "pytorch" in numbers:
            print(f"{model}: nwsjax compute step {1e3 * numbers['compute']['seconds_per_step']:.0f} ms, PyTorch "
                  f"{numbers['pytorch']['torch']} {1e3 * numbers['pytorch']['seconds_per_step']:.0f} ms: nwsjax is "
                  f"{numbers['compute_over_pytorch']:.2f}x the PyTorch loop's speed")
    print(f"load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"zoo": str(zoo.path), "backend": jax.default_backend(), "samples": len(samples),
                       "batch_size": args.batch_size, "cores": cores, "jax": jax.__version__,
                       "load_at_start": load_at_start, "load_at_end": os.getloadavg(), "models": results}, f, indent=1)
    return 0


def _torch_step(python: str, module, x, y, threads: int, steps: int) -> dict:
    """Times the same DMC (plan, widths, classes) in ``experiments/torch_dmc.py`` under ``python``
    on one batch ``x`` float32 ``[batch, length]``, labels ``y``; returns its JSON line."""
    import numpy as np

    from nwsjax.meta.models import DEEP_LENGTH, dmc_plan

    length = x.shape[1]
    plan = dmc_plan(length, length > DEEP_LENGTH if module.deep is None else module.deep)
    with tempfile.TemporaryDirectory() as tmp:
        arrays = pathlib.Path(tmp, "batch.npz")
        np.savez(arrays, x=x, y=np.asarray(y).astype(np.int64))
        command = [python, str(pathlib.Path(__file__).with_name("torch_dmc.py")), "--data", str(arrays),
                   "--plan", json.dumps(plan), "--width", str(module.width), "--classes", str(module.outputs),
                   "--threads", str(threads), "--timed-steps", str(steps)]
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


# NWSError (a user error) becomes one line on stderr and exit code 2.
main = main_wrapper(_main)


if __name__ == "__main__":
    sys.exit(main())
