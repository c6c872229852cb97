"""Where the cohort program's time goes: the trainer's step with one thing changed at a time.

    python experiments/profile_step.py --cores 1          # fixed NWS architecture, batch 64

Every variant is the trainer's cohort program (``step.train_round`` over ``lax.map``,
the default CPU strategy's convolution), compiled and timed in this one run on the same
cores, so the differences are what each piece costs:

  full                  the trainer as it runs: every hyper-parameter a traced array
  static activation     the activation a Python int (ReLU): no select among the four
  static optimizer      the optimizer a Python int (Adam): no switch among the three
  static augmentation   augmentation off as a Python bool: no conditional
  all static            the three above at once (what a one-configuration script compiles)
  gradients only        forward and backward of the loss in the same loop, no optimizer,
                        no finiteness checks, no batch-norm update
  convolutions only     the three conv layers' forward and backward passes (no image gradient)

``ms`` is per member-step (one member, one batch of 64); the matmul peak is measured
in the same run.
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=4)
    p.add_argument("--steps", type=int, default=8, help="fused steps per timed call")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cores", type=int, help="pin the run to its first N cores")
    return p.parse_args(argv)


if __name__ == "__main__":  # before jax is imported: XLA sizes its thread pool from the affinity mask
    ARGS = parse_args()
    if ARGS.cores:
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[: ARGS.cores])

import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from nwsjax import step  # noqa: E402
from nwsjax.data import load_dataset  # noqa: E402
from nwsjax.model import CONV_IMPLS, Architecture, NWSNet  # noqa: E402
from nwsjax.population import knobs_of  # noqa: E402
from nwsjax.space import sample_members  # noqa: E402
from nwsjax.strategy import default_strategy, map_members  # noqa: E402

BATCH = 64


def timed(fn, *args, repeats: int) -> tuple[float, float]:
    """(seconds of the first call, median seconds of ``repeats`` later calls)."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return first, float(np.median(times))


def main(args: argparse.Namespace) -> int:
    strategy = default_strategy()
    members = sample_members(args.members, seed=0, datasets=["digits"], fixed_architecture=True,
                             pins={"batch_size": BATCH, "augmentation": "off", "optimizer": "adam",
                                   "activation": "relu"})
    digits = load_dataset("digits")
    net = NWSNet(Architecture.of(members[0], digits.num_classes), conv_impl=strategy.conv)
    data = step.DeviceData(jnp.asarray(digits.train_images), jnp.asarray(digits.train_labels))
    n = len(digits.train_labels)
    plans = np.stack([step.epoch_order(m.seed, 0, n, BATCH)[: args.steps] for m in members])
    knobs = jax.tree.map(lambda *x: np.stack(x), *[knobs_of(m) for m in members])
    states = jax.jit(lambda k: map_members(strategy, lambda kk: step.init_member(net, kk), [k]))(knobs)
    per_step = args.members * args.steps
    rows = []

    def variant(name, **static):
        def round_fn(s, k, p):
            def one(s, k, p, d):
                return step.train_round(net, s, k._replace(**static), d, p, 0, 0, 0, args.steps, True)

            return map_members(strategy, one, [s, k, p], [data])

        first, seconds = timed(jax.jit(round_fn), states, knobs, plans, repeats=args.repeats)
        rows.append((name, 1e3 * seconds / per_step, first))
        print(f"  {name}: {rows[-1][1]:.1f} ms", file=sys.stderr, flush=True)

    variant("full")
    variant("static activation", activation=0)
    variant("static optimizer", optimizer=0)
    variant("static augmentation", augmentation=np.bool_(False))
    variant("all static", activation=0, optimizer=0, augmentation=np.bool_(False))

    def gradients(s, k, p):
        def one(s, k, p, d):
            def body(i, total):
                images, labels = step.load_batch(d, p[i])

                def loss(params):
                    logits, _ = net.apply({"params": params, "batch_stats": s.batch_stats}, images,
                                          activation=0, train=True, mutable=["batch_stats"],
                                          rngs={"dropout": jax.random.key(i)})
                    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

                grads = jax.grad(loss)(s.params)
                return total + sum(jnp.sum(g) for g in jax.tree.leaves(grads))

            return jax.lax.fori_loop(0, args.steps, body, jnp.zeros([]))

        return map_members(strategy, one, [s, k, p], [data])

    first, seconds = timed(jax.jit(gradients), states, knobs, plans, repeats=args.repeats)
    rows.append(("gradients only", 1e3 * seconds / per_step, first))

    conv = CONV_IMPLS[strategy.conv]
    shapes = [((BATCH, 32, 32, 3), (5, 5, 3, 8)), ((BATCH, 16, 16, 8), (5, 5, 8, 16)), ((BATCH, 8, 8, 16), (5, 5, 16, 32))]
    inputs = [(jnp.ones(x), jnp.ones(w)) for x, w in shapes]

    def convolutions(inputs):
        def body(i, total):
            for layer, (x, w) in enumerate(inputs):
                if layer == 0:  # training needs no gradient of the images
                    y, back = jax.vjp(lambda w: conv(x * (1 + i), w), w)
                    grads = back(y)
                else:
                    y, back = jax.vjp(conv, x * (1 + i), w)
                    grads = back(y)
                total = total + sum(jnp.sum(g) for g in grads)
            return total

        return jax.lax.fori_loop(0, per_step, body, jnp.zeros([]))

    first, seconds = timed(jax.jit(convolutions), inputs, repeats=args.repeats)
    rows.append(("convolutions only", 1e3 * seconds / per_step, first))

    a = jax.random.normal(jax.random.key(0), (2048, 2048))
    _, matmul = timed(jax.jit(lambda x: x @ x), a, repeats=5)
    full = rows[0][1]
    print(f"device: {jax.devices()[0].device_kind}, jax {jax.__version__}, cores {sorted(os.sched_getaffinity(0))}, "
          f"strategy {strategy.name}, load average {os.getloadavg()[0]:.2f}")
    print(f"members {args.members}, {args.steps} fused steps, batch {BATCH}; float32 matmul peak "
          f"{2 * 2048**3 / matmul / 1e9:.1f} GFLOP/s")
    print(f"{'variant':<22}{'ms/member-step':>15}{'vs full':>9}{'first call s':>14}")
    for name, ms, first in rows:
        print(f"{name:<22}{ms:>15.1f}{ms - full:>+9.1f}{first:>14.1f}")
    conv_flop = sum(2 * np.prod(x[:3]) * np.prod(w) for x, w in shapes) * 3 - 2 * np.prod(shapes[0][0][:3]) * np.prod(shapes[0][1])
    print(f"convolutions: {conv_flop / 1e6:.0f} MFLOP per member-step, {conv_flop / rows[-1][1] / 1e6:.1f} GFLOP/s; "
          f"they are {100 * rows[-1][1] / full:.0f}% of the full step")
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS))
