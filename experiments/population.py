"""Train a population of NWS CNNs together and write a zoo.

    python experiments/population.py                      # the demo: 16 nets on digits, zoo in runs/default
    python experiments/population.py --members 512 --dataset fashion_mnist --epochs 40 --out runs/fmnist
    python experiments/population.py --members 256 --fixed-architecture --set optimizer=adam --out runs/adam_only
"""

from __future__ import annotations

import os
import sys
import time


def _virtual_cpu_devices(argv: list[str]) -> None:
    """``--devices N`` on a CPU host: make N virtual devices (must precede JAX's start).

    Accelerator backends ignore this flag; their real devices are used.
    """
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--devices=") else argv[i + 1] if arg == "--devices" and i + 1 < len(argv) else None
        if value and value.isdigit() and int(value) > 1:
            flags = os.environ.get("XLA_FLAGS", "")
            if "xla_force_host_platform_device_count" not in flags:
                os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={value}".strip()


_virtual_cpu_devices(sys.argv[1:])

from nwsjax.cli import ArgumentParser, enable_compilation_cache, main_wrapper  # noqa: E402
from nwsjax.run import (  # noqa: E402
    RunConfig,
    config_from_args,
    disk_estimate,
    prepare_run,
    run_population,
    split_list,
    summary_table,
)
from nwsjax.space import PROPERTY_NAMES  # noqa: E402

DEFAULTS = RunConfig()

# With no arguments at all: a population that trains in a few minutes on a laptop CPU.
# One architecture and batch size make it one cohort, so it compiles once.
DEMO = ["--members", "16", "--fixed-architecture", "--set", "batch_size=64", "--epochs", "10"]


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
    p.add_argument("--epochs", type=int, help=f"most epochs per member (default {DEFAULTS.epochs})")
    p.add_argument(
        "--min-epochs", type=int, help=f"no early stopping before this epoch (default {DEFAULTS.min_epochs})"
    )
    p.add_argument("--snapshots", type=int, help=f"snapshots kept per member (default {DEFAULTS.snapshots})")
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
        "--devices",
        type=int,
        help="devices to shard each cohort over (default 1); on CPU, N virtual devices are made",
    )
    p.add_argument("--cache-dir", help="prepared-dataset cache folder")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        print(f"no arguments: the demo population, as population.py {' '.join(DEMO)}", file=sys.stderr)
        argv = DEMO
    args = parse_args(argv)
    quiet = args.quiet
    values = vars(args)
    del values["quiet"]
    values["datasets"] = split_list(values["datasets"])
    values["pins"] = split_list(values["pins"])
    config = config_from_args(**values)
    prepared = prepare_run(config, progress=not quiet)
    enable_compilation_cache()
    disk = disk_estimate(prepared)
    print(
        f"training {len(prepared.members)} members on {', '.join(prepared.datasets)} -> {config.out}: "
        f"{disk['per_member_snapshot'] / 1e6:.2f} MB per member snapshot, "
        f"zoo about {disk['zoo'] / 1e6:.0f} MB (+ up to {disk['scratch'] / 1e6:.0f} MB scratch while training)",
        file=sys.stderr,
    )
    bar = None
    if not quiet:
        from tqdm import tqdm

        bar = tqdm(total=config.members * config.epochs, unit="epoch", desc="member-epochs", dynamic_ncols=True)

    def on_progress(counters: dict) -> None:
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
    from nwsjax.zoo import open_zoo

    zoo = open_zoo(config.out)
    print(summary_table(zoo.members, report))
    print(f"zoo written to {config.out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main_wrapper(main)())
