"""Population training throughput against what a user would otherwise run, measured in one run.

    python experiments/bench.py                      # 32 members, fixed architecture, batch 64
    python experiments/bench.py --members 8 --steps 10 --json bench.json
    python experiments/bench.py --cores 1 --torch-python /usr/bin/python3

Every row trains the NWS "fixed" network with batch norm (5x5 convs of 8, 16, 32
channels, dense 128 and 64 with dropout 0.5, ReLU, Adam at lr 1e-3) on batches of 64
digits images, turned from uint8 into floats one batch at a time. Model-steps/s =
member training steps per second, each step on its own batch of 64.

Rows, bare training steps (compile excluded):
  loop                      one model, ``jax.jit(step)`` of nwsjax's step in a Python loop
  flax loop (steps)         a plain ``flax.linen`` module (below) with ``optax.adam``, one
                            ``jax.jit(train_step)`` call per step, batches indexed on the host
  pytorch loop (steps)      the same network in plain PyTorch (``experiments/torch_loop.py``,
                            run by ``--torch-python``); skipped without that option
  naive vmap                ``jax.jit(jax.vmap(step))`` over the members, lax.conv
  <strategy>                the trainer's cohort program (``step.train_round``: steps fused
                            in a loop, members laid out by the strategy), data on the device
Rows, end to end (``--trainer-epochs`` epochs, evaluation on validation and test after
every epoch, compile excluded):
  trainer (<strategy>)      ``train_population`` on digits: data, evaluation, exports and
                            Orbax snapshot writes included
  flax loop (end to end)    the plain Flax loop, jitted evaluation in batches of 500
  pytorch loop (end to end) the plain PyTorch loop, ``model.eval()``, ``no_grad``, batches of 500

"x loop" is model-steps/s over the ``loop`` row's, "x pytorch" over ``pytorch loop
(steps)``. Achieved FLOP/s uses 14 MFLOP per trained image (forward + backward) against
a float32 matmul measured in the same run. ``--cores N`` pins the whole run, the PyTorch
subprocess included, to N cores; torch never enters this process.
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, default=32)
    p.add_argument("--steps", type=int, default=8, help="fused steps per timed call")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--strategies", help="comma-separated, e.g. map+im2col,vmap+xla "
                   "(default: map with every conv implementation, chunked8 and vmap with the default one)")
    p.add_argument("--trainer-epochs", type=int, default=2, help="epochs of every end-to-end row")
    p.add_argument("--skip-naive", action="store_true", help="skip the (slow on CPU) naive vmap row")
    p.add_argument("--cores", type=int, help="pin the run to its first N cores (default: all it may use)")
    p.add_argument("--torch-python", help="a Python with torch, e.g. /usr/bin/python3, for the PyTorch rows")
    p.add_argument("--json", help="also write the results here")
    return p.parse_args(argv)


def pin_cores(count: int | None) -> list[int]:
    """Pins this process to its first ``count`` allowed cores; returns the cores it runs on.

    Must run before jax is imported. XLA:CPU sizes its intra-op thread pool from the
    affinity mask when its client starts, and every thread and subprocess started
    later inherits the mask. Measured on jax 0.10.2 (a conv + matmul program, CPU time
    per thread): pinned to one core, one thread does all the work; unpinned on two
    cores, four threads share it. ``--xla_cpu_multi_thread_eigen=false`` changes
    neither, so no XLA flag is set.
    """
    allowed = sorted(os.sched_getaffinity(0))
    if count is None:
        return allowed
    if not 1 <= count <= len(allowed):
        sys.exit(f"error: --cores {count}: this process may use {len(allowed)} cores")
    os.sched_setaffinity(0, allowed[:count])
    return allowed[:count]


if __name__ == "__main__":  # before the imports below: jax must start pinned
    ARGS = parse_args()
    CORES = pin_cores(ARGS.cores)

import dataclasses  # noqa: E402
import json  # noqa: E402
import pathlib  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import flax  # noqa: E402
import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from flax.training import train_state  # noqa: E402

from nwsjax import step  # noqa: E402
from nwsjax.data import Dataset, load_dataset  # noqa: E402
from nwsjax.model import CONV_IMPLS, Architecture, NWSNet  # noqa: E402
from nwsjax.population import TrainConfig, knobs_of, train_population  # noqa: E402
from nwsjax.space import sample_members  # noqa: E402
from nwsjax.stopping import StoppingConfig  # noqa: E402
from nwsjax.strategy import Strategy, default_strategy, map_members, parse_strategy  # noqa: E402
from nwsjax.zoo import ZooWriter  # noqa: E402

FLOP_PER_IMAGE = 14e6
BATCH = 64
EVAL_BATCH = 500
LRATE = 1e-3
BN = dict(momentum=0.99, epsilon=1e-3)  # TF1 defaults, as in nwsjax.model
TORCH_LOOP = pathlib.Path(__file__).with_name("torch_loop.py")
SPLITS = ("train", "val", "test")


def row(name: str, seconds_per_member_step: float, note: str, kind: str = "steps", **extra) -> dict:
    """One table row; ``kind`` is ``"steps"`` or ``"end to end"``, ``extra`` goes to the JSON only."""
    print(f"  measured {name}: {1 / seconds_per_member_step:.1f} model-steps/s", file=sys.stderr, flush=True)
    return {"name": name, "kind": kind, "ms_per_member_step": 1e3 * seconds_per_member_step,
            "model_steps_per_s": 1 / seconds_per_member_step, "note": note, **extra}


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


def default_strategies() -> list[str]:
    """``map`` with every conv implementation, ``chunked8`` and ``vmap`` with the backend's default one."""
    conv = default_strategy().conv
    return [f"map+{impl}" for impl in CONV_IMPLS] + [f"chunked8+{conv}", f"vmap+{conv}"]


# --- nwsjax: the single-model loop, naive vmap, the cohort programs, the trainer ---


class Library:
    """The members, their knobs and the digits data on the device, shared by the nwsjax rows."""

    def __init__(self, members, digits: Dataset, steps: int):
        self.members = members
        self.arch = Architecture.of(members[0], digits.num_classes)
        self.data = step.DeviceData(jnp.asarray(digits.train_images), jnp.asarray(digits.train_labels))
        n = len(digits.train_labels)
        self.plans = np.stack([step.epoch_order(m.seed, 0, n, BATCH)[:steps] for m in members])
        self.knobs = jax.tree.map(lambda *x: np.stack(x), *[knobs_of(m) for m in members])

    def cohort(self, conv: str):
        """A network with ``conv`` convolutions and every member's initial state, stacked."""
        net = NWSNet(self.arch, conv_impl=conv)
        init = lambda knobs: step.init_member(net, knobs)  # noqa: E731
        return net, jax.jit(lambda k: map_members(Strategy("vmap", conv), init, [k]))(self.knobs)


def loop_row(lib: Library, repeats: int) -> dict:
    """The baseline: one network, nwsjax's step jitted, called in a Python loop."""
    model = NWSNet(lib.arch)
    one = jax.tree.map(lambda x: x[0], lib.knobs)
    state = step.init_member(model, one)
    loop_step = jax.jit(lambda s, k, i, t: step.train_step(model, s, k, lib.data, i, t)[2])
    seconds = timed(lambda: loop_step(state, one, jnp.asarray(lib.plans[0, 0]), 0), repeats=10 * repeats)
    return row("loop", seconds, "one model, jit(step) in a Python loop")


def naive_row(lib: Library, repeats: int) -> dict:
    net, states = lib.cohort("xla")
    naive = jax.jit(jax.vmap(lambda s, k, i: step.train_step(net, s, k, lib.data, i, 0)[2]))
    seconds = timed(naive, states, lib.knobs, jnp.asarray(lib.plans[:, 0]), repeats=repeats)
    return row("naive vmap", seconds / len(lib.members), "jit(vmap(step)), lax.conv")


def strategy_row(lib: Library, strategy: Strategy, steps: int, repeats: int) -> dict:
    """The trainer's cohort program: ``steps`` fused steps of every member, laid out by ``strategy``."""
    net, states = lib.cohort(strategy.conv)

    def round_fn(s, k, p):
        fn = lambda s, k, p, d: step.train_round(net, s, k, d, p, 0, 0, 0, steps, True)  # noqa: E731
        return map_members(strategy, fn, [s, k, p], [lib.data])

    compiled = jax.jit(round_fn)
    start = time.perf_counter()
    jax.block_until_ready(compiled(states, lib.knobs, lib.plans))
    compile_s = time.perf_counter() - start
    seconds = timed(compiled, states, lib.knobs, lib.plans, repeats=repeats)
    return row(strategy.name, seconds / (len(lib.members) * steps), f"first call (compile) {compile_s:.1f} s",
               strategy=strategy.name, compile_seconds=compile_s)


def trainer_row(lib: Library, digits: Dataset, epochs: int) -> dict:
    """``train_population`` end to end for ``epochs`` epochs, compile time excluded."""
    with tempfile.TemporaryDirectory() as tmp:
        config = TrainConfig(stopping=StoppingConfig(epochs, epochs), snapshots=3)
        writer = ZooWriter(tmp, {"train": dataclasses.asdict(config)})
        report = train_population(lib.members, {"digits": digits}, writer, config)
        writer.wait()
        writer.close()
    compile_s = sum(report.compile_seconds.values())
    return row(f"trainer ({report.strategy})", (report.seconds - compile_s) / report.member_steps,
               f"{report.member_steps} member-steps, compile {compile_s:.1f} s excluded, "
               f"utilization {100 * report.utilization:.0f}%", kind="end to end",
               strategy=report.strategy, trainer=True, compile_seconds=compile_s, seconds=report.seconds,
               member_steps=report.member_steps)


# --- a plain Flax + optax loop, as a user would write it ---


class PlainNet(nn.Module):
    """The fixed NWS network written plainly: conv + bias, BN, ReLU, pool; dense, ReLU, BN, dropout."""

    @nn.compact
    def __call__(self, x, train: bool):
        for width in (8, 16, 32):
            x = nn.Conv(width, (5, 5), padding="SAME")(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train, **BN)(x))
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        for width in (128, 64):
            x = nn.BatchNorm(use_running_average=not train, **BN)(nn.relu(nn.Dense(width)(x)))
            x = nn.Dropout(0.5, deterministic=not train)(x)
        return nn.Dense(10)(x)


class TrainState(train_state.TrainState):
    batch_stats: Any
    dropout_key: jax.Array


PLAIN_NET = PlainNet()
# One optimizer object for every state: a TrainState's optimizer is a static field of
# its pytree, so a fresh ``optax.adam(...)`` per state would compile the step again.
ADAM = optax.adam(LRATE)


def flax_state(seed: int) -> TrainState:
    variables = PLAIN_NET.init(jax.random.key(seed), jnp.zeros((1, 32, 32, 3)), train=False)
    return TrainState.create(apply_fn=PLAIN_NET.apply, params=variables["params"], tx=ADAM,
                             batch_stats=variables["batch_stats"], dropout_key=jax.random.key(seed + 1))


@jax.jit
def flax_train_step(state: TrainState, images, labels):
    """One step on a uint8 batch; returns the new state and the batch loss."""
    x = images.astype(jnp.float32) / 255.0
    dropout_key = jax.random.fold_in(state.dropout_key, state.step)

    def loss_fn(params):
        logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats}, x, train=True,
                                         mutable=["batch_stats"], rngs={"dropout": dropout_key})
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), updates

    (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    return state.apply_gradients(grads=grads).replace(batch_stats=updates["batch_stats"]), loss


@jax.jit
def flax_correct(state: TrainState, images, labels):
    logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                            images.astype(jnp.float32) / 255.0, train=False)
    return jnp.sum(jnp.argmax(logits, -1) == labels)


def flax_accuracy(state: TrainState, images: np.ndarray, labels: np.ndarray) -> float:
    correct = sum(int(flax_correct(state, images[i : i + EVAL_BATCH], labels[i : i + EVAL_BATCH]))
                  for i in range(0, len(labels), EVAL_BATCH))
    return correct / len(labels)


def epoch_batches(rng: np.random.Generator, n: int) -> np.ndarray:
    """One epoch's batches of indices: a fresh permutation, the last partial batch dropped."""
    steps = n // BATCH
    return rng.permutation(n)[: steps * BATCH].reshape(steps, BATCH)


def flax_rows(digits: Dataset, epochs: int, repeats: int) -> tuple[dict, dict]:
    """Bare steps (median over ``10 * repeats`` calls), then ``epochs`` epochs with evaluation, timed whole.

    The step and the evaluation (at both split sizes) compile before the clocks start.
    """
    state = flax_state(0)
    index = epoch_batches(np.random.default_rng(0), len(digits.train_labels))[0]
    seconds = timed(lambda: flax_train_step(state, digits.train_images[index], digits.train_labels[index]),
                    repeats=10 * repeats)
    steps_row = row("flax loop (steps)", seconds, "flax.linen + optax.adam, jit(train_step) in a Python loop")
    for split in ("val", "test"):
        flax_accuracy(state, getattr(digits, f"{split}_images"), getattr(digits, f"{split}_labels"))

    state, rng, steps, history = flax_state(1), np.random.default_rng(1), 0, []
    start = time.perf_counter()
    for _ in range(epochs):
        for index in epoch_batches(rng, len(digits.train_labels)):
            state, _ = flax_train_step(state, digits.train_images[index], digits.train_labels[index])
            steps += 1
        history.append({"val_accuracy": flax_accuracy(state, digits.val_images, digits.val_labels),
                        "test_accuracy": flax_accuracy(state, digits.test_images, digits.test_labels)})
    seconds = time.perf_counter() - start
    e2e_row = row("flax loop (end to end)", seconds / steps, end_to_end_note(steps, history[-1]),
                  kind="end to end", seconds=seconds, steps=steps, epochs=history)
    return steps_row, e2e_row


def end_to_end_note(steps: int, last: dict) -> str:
    return (f"{steps} steps, eval after each epoch; last val {last['val_accuracy']:.2f}, "
            f"test {last['test_accuracy']:.2f}")


# --- a plain PyTorch loop, in a subprocess ---


def torch_rows(python: str, digits: Dataset, cores: list[int], epochs: int, repeats: int):
    """Runs ``torch_loop.py`` under ``python`` on this process's cores.

    Returns the steps row, the end-to-end row and torch's version.
    """
    with tempfile.TemporaryDirectory() as tmp:
        arrays = pathlib.Path(tmp, "digits.npz")
        fields = [f"{split}_{kind}" for split in SPLITS for kind in ("images", "labels")]
        np.savez(arrays, **{field: getattr(digits, field) for field in fields})
        command = [python, str(TORCH_LOOP), "--data", str(arrays), "--threads", str(len(cores)),
                   "--epochs", str(epochs), "--timed-steps", str(10 * repeats),
                   "--batch", str(BATCH), "--eval-batch", str(EVAL_BATCH)]
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    e2e = result["end_to_end"]
    steps_row = row("pytorch loop (steps)", result["step_seconds"], threads=result["threads"],
                    note=f"torch.set_num_threads({result['threads']}), forward, backward, Adam step")
    e2e_row = row("pytorch loop (end to end)", e2e["seconds"] / e2e["steps"],
                  end_to_end_note(e2e["steps"], e2e["epochs"][-1]), kind="end to end", **e2e)
    return steps_row, e2e_row, result["torch"]


# --- the report ---


def find(rows: list[dict], name: str) -> dict | None:
    return next((r for r in rows if r["name"] == name), None)


def summary(rows: list[dict]) -> dict:
    """Ratios against the PyTorch loop (empty without PyTorch rows).

    Every row ran on the same cores, so a ratio of rates is also the ratio per core.
    The cohort program is the strategy row of the trainer's strategy, else the first one.
    """
    torch_steps, torch_e2e = find(rows, "pytorch loop (steps)"), find(rows, "pytorch loop (end to end)")
    if torch_steps is None:
        return {}
    trainer = next(r for r in rows if r.get("trainer"))
    cohorts = [r for r in rows if "strategy" in r and not r.get("trainer")]
    cohort = next((r for r in cohorts if r["strategy"] == trainer["strategy"]), cohorts[0])
    over = lambda r, base: r["model_steps_per_s"] / base["model_steps_per_s"]  # noqa: E731
    return {"trainer_per_core_over_pytorch_end_to_end": over(trainer, torch_e2e),
            "cohort_program": cohort["name"],
            "cohort_over_pytorch_steps": over(cohort, torch_steps),
            "flax_end_to_end_over_pytorch_end_to_end": over(find(rows, "flax loop (end to end)"), torch_e2e),
            "flax_steps_over_pytorch_steps": over(find(rows, "flax loop (steps)"), torch_steps)}


def add_ratios(rows: list[dict], peak: float) -> None:
    loop = find(rows, "loop")["model_steps_per_s"]
    torch_steps = find(rows, "pytorch loop (steps)")
    for r in rows:
        flops = r["model_steps_per_s"] * BATCH * FLOP_PER_IMAGE
        r.update(ratio_to_loop=r["model_steps_per_s"] / loop, gflops=flops / 1e9,
                 fraction_of_peak=flops / peak)
        if torch_steps:
            r["ratio_to_pytorch"] = r["model_steps_per_s"] / torch_steps["model_steps_per_s"]


def print_report(header: dict, rows: list[dict], ratios: dict) -> None:
    print()
    print(f"device: {header['device']}")
    print(f"versions: {', '.join(f'{k} {v}' for k, v in header['versions'].items())}")
    print(f"command: {header['command']}")
    print(f"cores: {len(header['cores'])} ({header['cores_note']}); load average at start "
          f"{' '.join(f'{x:.2f}' for x in header['load_at_start'])}, at end "
          f"{' '.join(f'{x:.2f}' for x in header['load_at_end'])}; this run's CPU time / wall time "
          f"{header['cpu_over_wall']:.2f}")
    print(f"members {header['members']}, fixed NWS architecture, batch {BATCH}, end-to-end rows "
          f"{header['epochs']} epochs; float32 matmul peak {header['peak_flops'] / 1e9:.1f} GFLOP/s")
    torch_col = "ratio_to_pytorch" in rows[0]
    x_pytorch = f"{'x pytorch':>10}" if torch_col else ""
    print(f"{'row':<28}{'ms/member-step':>15}{'model-steps/s':>15}{'x loop':>8}{x_pytorch}"
          f"{'GFLOP/s':>9}{'of peak':>9}  note")
    for r in rows:
        vs_torch = f"{r['ratio_to_pytorch']:>10.2f}" if torch_col else ""
        print(f"{r['name']:<28}{r['ms_per_member_step']:>15.1f}{r['model_steps_per_s']:>15.1f}"
              f"{r['ratio_to_loop']:>8.2f}{vs_torch}{r['gflops']:>9.1f}{100 * r['fraction_of_peak']:>8.1f}%"
              f"  {r['note']}")
    if ratios:
        print(f"end to end: trainer {ratios['trainer_per_core_over_pytorch_end_to_end']:.2f}x the PyTorch "
              f"loop per core; cohort program ({ratios['cohort_program']}) "
              f"{ratios['cohort_over_pytorch_steps']:.2f}x the PyTorch loop's steps")
        print(f"plain Flax loop: end to end {ratios['flax_end_to_end_over_pytorch_end_to_end']:.2f}x, steps "
              f"{ratios['flax_steps_over_pytorch_steps']:.2f}x the PyTorch loop")
    else:
        print("PyTorch rows skipped: pass --torch-python PATH (a Python with torch) to measure them")


def cpu_seconds() -> float:
    """User + system CPU time of this process and its finished subprocesses."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(args: argparse.Namespace, cores: list[int], command: str) -> int:
    load_at_start = os.getloadavg()
    wall0, cpu0 = time.perf_counter(), cpu_seconds()
    names = args.strategies.split(",") if args.strategies else default_strategies()
    strategies = [parse_strategy(name) for name in names]
    pins = dict(batch_size=BATCH, augmentation="off", optimizer="adam", activation="relu", lrate=LRATE)
    members = sample_members(args.members, seed=0, datasets=["digits"], fixed_architecture=True, pins=pins)
    digits = load_dataset("digits")
    lib = Library(members, digits, args.steps)

    versions = {"jax": jax.__version__, "flax": flax.__version__, "optax": optax.__version__}
    steps, end_to_end = [loop_row(lib, args.repeats)], []
    flax_steps, flax_e2e = flax_rows(digits, args.trainer_epochs, args.repeats)
    steps.append(flax_steps)
    if args.torch_python:
        torch_steps, torch_e2e, versions["torch"] = torch_rows(args.torch_python, digits, cores,
                                                               args.trainer_epochs, args.repeats)
        steps.append(torch_steps)
        end_to_end.append(torch_e2e)
    if not args.skip_naive:
        steps.append(naive_row(lib, args.repeats))
    steps += [strategy_row(lib, s, args.steps, args.repeats) for s in strategies]
    rows = [*steps, trainer_row(lib, digits, args.trainer_epochs), flax_e2e, *end_to_end]
    peak = matmul_peak()
    add_ratios(rows, peak)
    ratios = summary(rows)

    device = f"{jax.devices()[0].device_kind} ({jax.default_backend()})"
    cpu = platform.processor() or platform.machine()
    versions["python"] = platform.python_version()
    header = {"device": f"{device}, {cpu}, {os.cpu_count()} cores in all",
              "versions": versions, "command": command, "cores": cores,
              "cores_note": f"pinned to cpu {','.join(map(str, cores))}" if args.cores else "not pinned",
              "load_at_start": load_at_start, "load_at_end": os.getloadavg(),
              "cpu_over_wall": (cpu_seconds() - cpu0) / (time.perf_counter() - wall0),
              "members": args.members, "steps": args.steps, "repeats": args.repeats,
              "epochs": args.trainer_epochs, "strategies": [s.name for s in strategies], "peak_flops": peak}
    print_report(header, rows, ratios)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**header, "rows": rows, "ratios": ratios}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(ARGS, CORES, f"python experiments/bench.py {' '.join(sys.argv[1:])}"))
