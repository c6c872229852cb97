"""Train a population of NWS CNNs together and write a zoo.

    python experiments/population.py                      # the demo: 16 nets on digits, zoo in runs/default
    python experiments/population.py --members 512 --dataset fashion_mnist --epochs 40 --out runs/fmnist
    python experiments/population.py --members 256 --fixed-architecture --set optimizer=adam --out runs/adam_only
    python experiments/population.py --resume --out runs/fmnist        # continue a killed run
    python experiments/population.py ... --coordinator HOST:PORT --num-processes N --process-id I   # multi-host
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def _option(argv: list[str], name: str) -> str | None:
    """The value of ``--name V`` or ``--name=V`` in ``argv`` (before argparse: JAX is not started yet)."""
    for i, arg in enumerate(argv):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _virtual_cpu_devices(argv: list[str]) -> None:
    """Makes a CPU host's virtual devices (must precede JAX's start): one per device the run uses.

    ``--devices N`` if given; for ``--resume``, the count the interrupted run used (its
    zoo.json); otherwise one per core this process may use, the CPU default (see
    :func:`default_devices`). Accelerator backends ignore the flag; their real devices are used.
    """
    if "jax" in sys.modules:  # imported by a program that started JAX already (tests): too late, and not ours to set
        return
    value = _option(argv, "--devices")
    if value is None and "--resume" in argv:
        import json

        try:
            info = json.loads((Path(_option(argv, "--out") or "runs/default") / "zoo.json").read_text())
            run = info["config"]["run"]
            value = str(run["train"]["devices"] if "train" in run else run["devices"])
        except (OSError, ValueError, KeyError, TypeError):
            value = None  # resume_config reports what is wrong with the folder
    if value is None and _option(argv, "--coordinator") is None:
        value = str(len(os.sched_getaffinity(0)))
    if value and value.isdigit() and int(value) > 1:
        flags = os.environ.get("XLA_FLAGS", "")
        if "xla_force_host_platform_device_count" not in flags:
            os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={value}".strip()


_virtual_cpu_devices(sys.argv[1:])

from nwsjax.cli import ArgumentParser, enable_compilation_cache, exit_process, main_wrapper  # noqa: E402
from nwsjax.errors import ConfigError  # noqa: E402
from nwsjax.run import (  # noqa: E402
    RunConfig,
    prepare_run,
    resume_config,
    run_config,
    run_population,
    split_list,
    summary_table,
)
from nwsjax.space import PROPERTY_NAMES  # noqa: E402
from nwsjax.zoo import never_started  # noqa: E402

DEFAULTS = RunConfig()

# Without options that shape the population: one that trains in a few minutes on a
# laptop CPU. One architecture and batch size make it one cohort, so it compiles once.
DEMO = ["--members", "16", "--fixed-architecture", "--set", "batch_size=64", "--epochs", "10"]
# The options that say what population to train; any other (--out, --seed, --quiet,
# --strategy, ...) leaves the demo as it is.
POPULATION_OPTIONS = ("members", "datasets", "epochs", "min_epochs", "fixed_architecture", "pins", "max_images")


def parse_args(argv):
    p = ArgumentParser(prog="population.py", description=__doc__.splitlines()[0])
    p.add_argument("--members", type=int, help=f"population size (default {DEFAULTS.members})")
    p.add_argument(
        "--dataset",
        action="append",
        dest="datasets",
        help="dataset(s) drawn per member: digits, mnist, fashion_mnist, cifar10, svhn, stl10, "
        "any TFDS name, an IDX folder or name=folder; repeat or comma-separate (default digits)",
    )
    p.add_argument("--epochs", type=int, help=f"most epochs per member (default {DEFAULTS.train.stopping.max_epochs})")
    p.add_argument(
        "--min-epochs", type=int, help=f"no early stopping before this epoch (default {DEFAULTS.train.stopping.min_epochs})"
    )
    p.add_argument("--snapshots", type=int, help=f"snapshots kept per member (default {DEFAULTS.train.snapshots})")
    p.add_argument("--seed", type=int, help="run seed (default 0)")
    p.add_argument("--out", help=f"zoo folder to write (default {DEFAULTS.out})")
    p.add_argument("--overwrite", action="store_true", default=None, help="replace a zoo already in --out")
    p.add_argument(
        "--fixed-architecture", action="store_true", default=None, help="every member gets the nws_fixed architecture"
    )
    p.add_argument(
        "--set",
        action="append",
        dest="pins",
        metavar="NAME=VALUE",
        help=f"pin a property to an option name or index, e.g. optimizer=adam; names: {', '.join(PROPERTY_NAMES)}",
    )
    p.add_argument("--max-images", type=int, help="cap each dataset split at this many images (quick studies)")
    p.add_argument("--strategy", help="execution strategy: auto, map, vmap, chunkedN, with +xla or +im2col")
    p.add_argument("--max-slots", type=int, help="most members of one cohort trained at once (default 256)")
    p.add_argument(
        "--pad-architectures", choices=("auto", "all", "none"),
        help="members of different architectures share padded programs: auto (a cost model weighs compile "
        "time against padded FLOPs; default), all (one program per batch size), none (one per architecture)",
    )
    p.add_argument(
        "--devices",
        type=int,
        help="devices to shard each cohort over; on CPU, N virtual devices are made "
        "(default: on CPU one per core, measured 1.9x one core on 2 cores; elsewhere 1)",
    )
    p.add_argument(
        "--resume", action="store_true", default=None,
        help="continue the killed run whose zoo is in --out (its settings are stored there)",
    )
    p.add_argument("--members-per-part", type=int, help="members per snapshot checkpoint, the unit a run commits (default 16)")
    p.add_argument(
        "--coordinator",
        help="multi-host: HOST:PORT of process 0, or 'auto' where JAX detects the cluster (SLURM, TPU pods)",
    )
    p.add_argument("--num-processes", type=int, help="multi-host: number of processes")
    p.add_argument("--process-id", type=int, help="multi-host: this process's index, 0..N-1")
    p.add_argument("--cache-dir", help="prepared-dataset cache folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    demo = not args.resume and all(getattr(args, name) is None for name in POPULATION_OPTIONS)
    if demo:
        args = parse_args(DEMO + argv)
    values = vars(args)
    quiet = values.pop("quiet")
    process = join_processes(values.pop("coordinator"), values.pop("num_processes"), values.pop("process_id"))
    quiet = quiet or process > 0
    values["datasets"] = split_list(values["datasets"])
    values["pins"] = split_list(values["pins"])
    out = values["out"] or DEFAULTS.out
    if values["devices"] is None and not multi_process() and (not values["resume"] or never_started(out)):
        values["devices"] = default_devices()  # a resumed run keeps its own
    if values["resume"]:
        config = resume_config(out, values)
    else:
        config = run_config(**values)
    prepared = prepare_run(config, progress=not quiet)
    enable_compilation_cache()
    quiet_background_writers()
    disk = prepared.disk
    if process == 0 and demo:
        print(f"the demo population, as population.py {' '.join(DEMO)}", file=sys.stderr)
    if process == 0:
        print(
            f"{'resuming' if config.resume else 'training'} {len(prepared.members)} members on "
            f"{', '.join(prepared.datasets)} -> {config.out}: "
            f"{disk['per_member_snapshot'] / 1e6:.2f} MB per member snapshot, "
            f"zoo about {disk['zoo'] / 1e6:.0f} MB (+ up to {disk['scratch'] / 1e6:.0f} MB scratch while training)",
            file=sys.stderr,
        )
    bar = None
    if not quiet:
        from tqdm import tqdm

        bar = tqdm(total=config.members * config.train.stopping.max_epochs, unit="epoch", desc="member-epochs", dynamic_ncols=True)

    def on_progress(counters: dict) -> None:
        bar.total = counters["members"] * config.train.stopping.max_epochs
        bar.n = counters["member_epochs"]
        bar.set_postfix(
            cohort=f"{counters['cohort']}/{counters['cohorts']}",
            active=counters["active"],
            done=f"{counters['finished']}/{counters['members']}",
            steps_s=f"{counters['member_steps'] / max(counters['seconds'], 1e-9):.1f}",
            refresh=False,
        )
        bar.refresh()

    start = time.perf_counter()
    report = run_population(prepared, on_progress=on_progress if bar else None)
    if bar:
        bar.n = bar.total
        bar.close()
    if process > 0:
        print(f"process {process}: trained {report.members} members", file=sys.stderr)
        return 0
    from nwsjax.zoo import open_zoo

    zoo = open_zoo(config.out)
    print(summary_table(zoo.members, report))
    print(f"zoo written to {config.out} in {time.perf_counter() - start:.1f} s")
    return 0


def quiet_background_writers() -> None:
    """Keeps Orbax's background writers from printing tracebacks of their own.

    When a write fails (a full disk), Orbax logs the failure with tracebacks, and its
    worker threads may then call into an event loop already closed. The run reports
    the failure itself: a full disk as one line, anything else re-raised with its
    traceback in the main thread.
    """
    import logging
    import threading

    for name in ("absl", "asyncio", "concurrent.futures"):
        logging.getLogger(name).setLevel(logging.CRITICAL)

    def closed_loop(error) -> bool:
        return isinstance(error, RuntimeError) and "Event loop is closed" in str(error)

    thread_hook, process_hook = threading.excepthook, sys.excepthook
    threading.excepthook = lambda args: None if closed_loop(args.exc_value) else thread_hook(args)
    # Callbacks from TensorStore's own threads report through sys.excepthook.
    sys.excepthook = lambda kind, error, trace: None if closed_loop(error) else process_hook(kind, error, trace)


def default_devices() -> int:
    """Devices a single-process run shards its cohorts over when ``--devices`` is not given.

    On CPU, one virtual device per core this process may use: each device trains its
    share of a cohort's members single-threaded, which beat one device whose kernels
    XLA splits over threads (``experiments/scaling.py``, 2 cores: 1.88x against 1.31x
    the one-core rate). Elsewhere 1 (``--devices N`` shards over N accelerators).
    """
    import jax

    if jax.default_backend() != "cpu":
        return 1
    return max(1, min(len(jax.local_devices()), len(os.sched_getaffinity(0))))


def multi_process() -> bool:
    import jax

    return jax.process_count() > 1


def join_processes(coordinator: str | None, num_processes: int | None, process_id: int | None) -> int:
    """Joins JAX's multi-process runtime when asked to; returns this process's index (0 alone)."""
    if coordinator is None:
        if num_processes is not None or process_id is not None:
            raise ConfigError("--num-processes/--process-id need --coordinator HOST:PORT (or --coordinator auto)")
        return 0
    import jax

    if coordinator == "auto":
        kwargs = {}
    else:
        if num_processes is None or process_id is None:
            raise ConfigError("--coordinator HOST:PORT needs --num-processes N and --process-id I")
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise ConfigError(f"--process-id {process_id}: must be in 0..{num_processes - 1} (--num-processes {num_processes})")
        kwargs = dict(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    try:
        jax.distributed.initialize(**kwargs, initialization_timeout=int(os.environ.get("NWSJAX_JOIN_TIMEOUT", "300")))
    except Exception as err:  # jax raises several types; the message names the cause
        reason = str(err).strip().splitlines()[0][:200] if str(err).strip() else err.__class__.__name__
        raise ConfigError(f"--coordinator {coordinator}: could not join the multi-process run ({reason}); "
                          "check the address, port and that every process was started") from None
    return jax.process_index()


if __name__ == "__main__":
    exit_process(main_wrapper(main)())
