"""Population training throughput against the obvious alternatives, measured in one run.

    python experiments/bench.py                      # 32 members, fixed architecture, batch 64
    python experiments/bench.py --members 8 --steps 10 --json bench.json

Rows (model-steps/s = member training steps per second, each on its own batch of 64):
  loop         one model, ``jax.jit(step)`` called in a Python loop (the baseline)
  naive vmap   ``jax.jit(jax.vmap(step))`` over the members, lax.conv
  <strategy>   the trainer's cohort program (``step.train_round``: steps fused in a
               loop, members laid out by the strategy), data gathered on the device
  trainer      ``train_population`` end to end on digits: data, augmentation,
               evaluation, exports and Orbax snapshot writes included, compile excluded
The ratio column is model-steps/s over the loop's. Achieved FLOP/s uses 14 MFLOP per
trained image (forward + backward of the fixed architecture) against a float32
matmul measured in the same run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from nwsjax import step
from nwsjax.data import load_dataset
from nwsjax.model import Architecture, NWSNet
from nwsjax.population import TrainConfig, knobs_of, train_population
from nwsjax.space import sample_members
from nwsjax.stopping import StoppingConfig
from nwsjax.strategy import Strategy, map_members
from nwsjax.zoo import ZooWriter

FLOP_PER_IMAGE = 14e6
BATCH = 64


def timed(fn, *args, repeats: int):
    """Median seconds of ``fn(*args)`` over ``repeats`` calls after one warm-up call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def matmul_peak(size: int = 2048) -> float:
    a = jax.random.normal(jax.random.key(0), (size, size))
    f = jax.jit(lambda x: x @ x)
    return 2 * size**3 / timed(f, a, repeats=5)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=32)
    p.add_argument("--steps", type=int, default=8, help="fused steps per timed call")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--strategies", default="map+im2col,map+xla,chunked8+im2col,vmap+im2col")
    p.add_argument("--trainer-epochs", type=int, default=2)
    p.add_argument("--skip-naive", action="store_true", help="skip the (slow on CPU) naive vmap row")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    members = sample_members(args.members, seed=0, datasets=["digits"], fixed_architecture=True,
                             pins={"batch_size": BATCH, "augmentation": "off"})
    arch = Architecture.of(members[0])
    digits = load_dataset("digits")
    data = step.DeviceData(jnp.asarray(digits.train_images), jnp.asarray(digits.train_labels))
    n = len(digits.train_labels)
    plans = np.stack([step.epoch_order(m.seed, 0, n, BATCH)[: args.steps] for m in members])
    knobs = jax.tree.map(lambda *x: np.stack(x), *[knobs_of(m) for m in members])
    rows = []

    def record(name, seconds_per_member_step, note=""):
        rows.append({"name": name, "ms_per_member_step": 1e3 * seconds_per_member_step,
                     "model_steps_per_s": 1 / seconds_per_member_step, "note": note})
        print(f"  measured {name}: {1 / seconds_per_member_step:.1f} model-steps/s", file=sys.stderr, flush=True)

    # The baseline: one network, a jitted step, a Python loop.
    model = NWSNet(arch)
    one = jax.tree.map(lambda x: x[0], knobs)
    single = step.init_member(model, one)
    loop_step = jax.jit(lambda s, k, i, t: step.train_step(model, s, k, data, i, t)[2])
    seconds = timed(lambda: loop_step(single, one, jnp.asarray(plans[0, 0]), 0), repeats=10 * args.repeats)
    record("loop", seconds, "one model, jit(step) in a Python loop")

    def cohort_states(conv):
        net = NWSNet(arch, conv_impl=conv)
        return net, jax.jit(lambda k: map_members(Strategy("vmap", conv), lambda kk: step.init_member(net, kk), [k]))(knobs)

    if not args.skip_naive:
        net, states = cohort_states("xla")
        naive = jax.jit(jax.vmap(lambda s, k, i: step.train_step(net, s, k, data, i, 0)[2]))
        seconds = timed(naive, states, knobs, jnp.asarray(plans[:, 0]), repeats=args.repeats)
        record("naive vmap", seconds / args.members, "jit(vmap(step)), lax.conv")

    for text in args.strategies.split(","):
        batching, _, conv = text.partition("+")
        chunk = int(batching[7:]) if batching.startswith("chunked") else 8
        strategy = Strategy("chunked" if batching.startswith("chunked") else batching, conv, chunk)
        net, states = cohort_states(conv)
        zeros = np.zeros(args.members, np.int32)

        def round_fn(s, k, p):
            fn = lambda s, k, p, d: step.train_round(net, s, k, d, p, 0, 0, 0, args.steps, True)  # noqa: E731
            return map_members(strategy, fn, [s, k, p], [data])

        compiled = jax.jit(round_fn)
        start = time.perf_counter()
        jax.block_until_ready(compiled(states, knobs, plans))
        compile_s = time.perf_counter() - start
        seconds = timed(compiled, states, knobs, plans, repeats=args.repeats)
        record(strategy.name, seconds / (args.members * args.steps), f"first call (compile) {compile_s:.1f} s")
        del zeros

    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(stopping=StoppingConfig(args.trainer_epochs, args.trainer_epochs), snapshots=3)
        writer = ZooWriter(tmp, {"train": dataclasses.asdict(config)})
        report = train_population(members, {"digits": digits}, writer, config)
        writer.wait()
        writer.close()
        compile_s = sum(report.compile_seconds.values())
        seconds = (report.seconds - compile_s) / report.member_steps
        record(f"trainer ({report.strategy})", seconds,
               f"end to end, {report.member_steps} member-steps, compile {compile_s:.1f} s excluded, "
               f"utilization {100 * report.utilization:.0f}%")

    peak = matmul_peak()
    loop = rows[0]["model_steps_per_s"]
    print()
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {platform.processor() or platform.machine()}")
    print(f"versions: jax {jax.__version__}, python {platform.python_version()}")
    print(f"command: python experiments/bench.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"members {args.members}, fixed NWS architecture, batch {BATCH}; float32 matmul peak {peak / 1e9:.1f} GFLOP/s")
    print(f"{'strategy':<28}{'ms/member-step':>15}{'model-steps/s':>15}{'x loop':>8}{'GFLOP/s':>9}{'of peak':>9}  note")
    for row in rows:
        flops = row["model_steps_per_s"] * BATCH * FLOP_PER_IMAGE
        row.update(ratio_to_loop=row["model_steps_per_s"] / loop, gflops=flops / 1e9, fraction_of_peak=flops / peak)
        print(f"{row['name']:<28}{row['ms_per_member_step']:>15.1f}{row['model_steps_per_s']:>15.1f}"
              f"{row['ratio_to_loop']:>8.2f}{row['gflops']:>9.1f}{100 * row['fraction_of_peak']:>8.1f}%  {row['note']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "peak_flops": peak, "members": args.members, "jax": jax.__version__,
                       "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend()}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
