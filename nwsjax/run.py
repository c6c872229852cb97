"""One population run, from settings to a finished zoo: what ``experiments/population.py`` calls.

:func:`prepare_run` validates everything a user typed and loads the datasets before
any training starts, so bad input fails in a second with a one-line error;
:func:`run_population` trains and writes the zoo; :func:`summary_table` formats
what a researcher wants to see at the end.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nwsjax.data import Dataset, load_dataset, resolve_dataset, subset
from nwsjax.errors import ConfigError, DiskFullError
from nwsjax.population import PopulationReport, TrainConfig, check_devices, plan_population, train_population
from nwsjax.programs import Program
from nwsjax.space import MAX_MEMBERS, MemberConfig, parse_pins, sample_members
from nwsjax.stopping import StoppingConfig
from nwsjax.strategy import parse_strategy
from nwsjax.zoo import FORMAT, ZooWriter, committed_members, lock_zoo, never_started, read_info

__all__ = [
    "RunConfig",
    "run_config",
    "PreparedRun",
    "prepare_run",
    "run_population",
    "resume_config",
    "assign_members",
    "summary_table",
    "did_not_train",
    "UNTRAINED_BELOW",
    "disk_estimate",
    "check_disk",
]


def _default_train() -> TrainConfig:
    return TrainConfig(stopping=StoppingConfig(max_epochs=15, min_epochs=20))


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a population run is given, saved whole in the zoo's zoo.json.

    Attributes:
      out: the zoo folder to write.
      members: population size.
      datasets: dataset names or IDX folders, drawn uniformly per member.
      seed: run seed: same seed, same members, same zoo.
      fixed_architecture: use the nws_fixed architecture for every member.
      pins: ``--set`` items, e.g. ``("optimizer=adam",)``.
      max_images: cap every dataset split at this many images (None: full data).
      train: how the population trains: epochs and early stopping, snapshots, strategy,
        slots, padding policy, devices (:class:`~nwsjax.population.TrainConfig`; the
        run's default stops at 15 epochs).
      cache_dir: prepared-dataset cache (None: ``$NWSJAX_CACHE`` or ~/.cache/nwsjax).
      overwrite: replace an existing zoo in ``out``.
      resume: continue the interrupted run whose zoo is in ``out`` (see :func:`resume_config`).
      members_per_part: members per Orbax checkpoint of the zoo (the unit a run commits).

    :func:`run_config` builds one from the command line's flat names (``epochs=``,
    ``snapshots=``, ``devices=``, ...).
    """

    out: str = "runs/default"
    members: int = 16
    datasets: tuple[str, ...] = ("digits",)
    seed: int = 0
    fixed_architecture: bool = False
    pins: tuple[str, ...] = ()
    max_images: int | None = None
    train: TrainConfig = dataclasses.field(default_factory=_default_train)
    cache_dir: str | None = None
    overwrite: bool = False
    resume: bool = False
    members_per_part: int = 16

    def __post_init__(self):
        if self.members < 1:
            raise ConfigError(f"--members {self.members}: need at least 1 member")
        if self.members > MAX_MEMBERS:
            raise ConfigError(f"--members {self.members}: at most {MAX_MEMBERS:,} per run; split the study into several zoos")
        if self.max_images is not None and self.max_images < 1:
            raise ConfigError(f"--max-images {self.max_images}: must be >= 1")
        if self.seed < 0:
            raise ConfigError(f"--seed {self.seed}: must be an integer >= 0, e.g. --seed 0")
        if self.members_per_part < 1:
            raise ConfigError(f"--members-per-part {self.members_per_part}: must be >= 1")
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite contradict each other; pass one of them")

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> RunConfig:
        """The config ``dataclasses.asdict`` gave ``record`` (zoo.json's ``config.run``).

        Records of zoos written before the run nested its training config (flat
        ``epochs``, ``snapshots``, ... beside ``out``) are read too.
        """
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in record.items() if k != "train"}
        nested = {k: values.pop(k) for k in list(values) if k in CLI_PATHS and CLI_PATHS[k][0] == "train"}
        config = cls(**values, train=TrainConfig.from_record(record["train"])) if "train" in record else cls(**values)
        return with_flat(config, nested)


# Where each command-line name lives in a RunConfig (the others are RunConfig fields).
CLI_PATHS = {
    "epochs": ("train", "stopping", "max_epochs"),
    "min_epochs": ("train", "stopping", "min_epochs"),
    "snapshots": ("train", "snapshots"),
    "strategy": ("train", "strategy"),
    "max_slots": ("train", "max_slots"),
    "pad_architectures": ("train", "pad_architectures"),
    "devices": ("train", "devices"),
}


def flat_value(config: RunConfig, name: str) -> Any:
    """The value of command-line name ``name`` (e.g. ``"epochs"``) in ``config``."""
    value = config
    for attr in CLI_PATHS.get(name, (name,)):
        value = getattr(value, attr)
    return value


def _replace_path(obj: Any, path: Sequence[str], value: Any) -> Any:
    if len(path) == 1:
        return dataclasses.replace(obj, **{path[0]: value})
    return dataclasses.replace(obj, **{path[0]: _replace_path(getattr(obj, path[0]), path[1:], value)})


def with_flat(config: RunConfig, values: Mapping[str, Any]) -> RunConfig:
    """``config`` with command-line names set (e.g. ``{"epochs": 4, "devices": 2}``)."""
    train = config.train
    for name, value in values.items():
        path = CLI_PATHS.get(name)
        if path is not None:
            train = _replace_path(train, path[1:], value)
    top = {name: value for name, value in values.items() if name not in CLI_PATHS}
    return dataclasses.replace(config, train=train, **top)


def run_config(**values: Any) -> RunConfig:
    """A RunConfig from command-line names (``epochs=4, snapshots=5, devices=2, out=...``).

    Lists become tuples; None keeps the default.
    """
    given = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if v is not None}
    unknown = sorted(set(given) - set(CLI_PATHS) - {f.name for f in dataclasses.fields(RunConfig)})
    if unknown:
        raise TypeError(f"run_config: unknown settings {', '.join(unknown)}")
    top = {k: v for k, v in given.items() if k not in CLI_PATHS}
    return with_flat(RunConfig(**top), {k: v for k, v in given.items() if k in CLI_PATHS})


@dataclasses.dataclass
class PreparedRun:
    """A validated run: its members, datasets, programs and disk estimate.

    Attributes:
      config: the run's settings.
      members: the sampled population; member ``i`` gets id ``i``.
      datasets: every dataset a member names, loaded (and cut to ``max_images``).
      programs: the compiled programs and the members each trains
        (:func:`~nwsjax.population.plan_population`).
      disk: :func:`disk_estimate` of the run.
    """

    config: RunConfig
    members: list[MemberConfig]
    datasets: dict[str, Dataset]
    programs: list[Program]
    disk: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def train(self) -> TrainConfig:
        return self.config.train


def _check_out(config: RunConfig) -> Path:
    out = Path(config.out)
    if config.resume:
        read_info(out, running=True)
        return out
    existing = next(p for p in [out.absolute(), *out.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"--out {out}: {existing} exists and is not a folder; choose another --out")
    if out.is_dir() and any(out.iterdir()) and not never_started(out):
        info = out / "zoo.json"
        try:
            is_zoo = info.is_file() and json.loads(info.read_text()).get("format") == FORMAT
        except (OSError, ValueError, AttributeError):
            is_zoo = False
        if not is_zoo:
            raise ConfigError(f"--out {out}: folder is not empty and holds no zoo; choose another --out")
        if not config.overwrite:
            raise ConfigError(f"--out {out}: holds a zoo already; pass --overwrite to replace it or choose another --out")
        lock_zoo(out).release()  # refuses a zoo that a live run is still writing
    return out


def prepare_run(config: RunConfig, *, progress: bool = False) -> PreparedRun:
    """Validates ``config`` against this machine, loads its datasets and plans its programs.

    Everything that can fail on bad input fails here, before any training: devices,
    the output folder, dataset names and sizes, and (for a new run) free disk space.
    Raises NWSError.
    """
    pins = parse_pins(config.pins)
    check_devices(config.train.devices)
    _check_out(config)
    names = [pins["dataset"]] if "dataset" in pins else list(config.datasets)
    sources = {resolve_dataset(name).name: name for name in names}  # fails fast on bad names
    datasets = {}
    for name, spec in sources.items():
        dataset = load_dataset(spec, cache_dir=config.cache_dir, progress=progress)
        datasets[name] = subset(dataset, config.max_images) if config.max_images else dataset
    if "dataset" in pins:
        pins["dataset"] = next(iter(sources))
    members = sample_members(
        config.members,
        config.seed,
        datasets=list(sources),
        pins=pins,
        fixed_architecture=config.fixed_architecture,
    )
    for name, dataset in datasets.items():
        smallest = min((m.batch_size for m in members if m.dataset == name), default=0)
        if smallest and len(dataset.train_labels) < smallest:
            raise ConfigError(
                f"dataset {name} has {len(dataset.train_labels)} training images, fewer than "
                f"batch size {smallest}; raise --max-images or pin a smaller --set batch_size"
            )
    classes = {name: dataset.num_classes for name, dataset in datasets.items()}
    sizes = {name: len(dataset.train_labels) for name, dataset in datasets.items()}
    prepared = PreparedRun(config, members, datasets, plan_population(members, sizes, classes, config.train))
    prepared.disk = disk_estimate(prepared)
    if config.resume:
        _check_same_data(prepared)
    else:
        check_disk(prepared)
    return prepared


def disk_estimate(prepared: PreparedRun) -> dict[str, float]:
    """Bytes the zoo will take, and the scratch space exports need while members train.

    Returns ``{"per_member_snapshot": mean bytes, "zoo": total bytes of snapshots,
    "scratch": most bytes of in-flight exports}`` (float32 weights and batch-norm
    statistics; tables and metadata are small beside them).
    """
    from nwsjax.layout import count_weights
    from nwsjax.model import Architecture

    sizes = []
    for member in prepared.members:
        arch = Architecture.of(member, prepared.datasets[member.dataset].num_classes)
        sizes.append(4 * count_weights(arch, moving_stats=True)["total"])  # parameters and moving statistics
    k = prepared.train.snapshots
    in_flight = min(len(sizes), prepared.train.max_slots * max(1, prepared.train.devices))
    largest = sorted(sizes)[-in_flight:]
    return {
        "per_member_snapshot": float(np.mean(sizes)),
        "zoo": float(sum(sizes) * k),
        "scratch": float(sum(largest) * (prepared.train.stopping.max_epochs + 1)),
    }


def check_disk(prepared: PreparedRun) -> dict[str, float]:
    """Raises ConfigError when the zoo would not fit the free space of its disk."""
    estimate = dict(prepared.disk or disk_estimate(prepared))
    out = Path(prepared.config.out).absolute()
    existing = next(p for p in [out, *out.parents] if p.exists())
    free = shutil.disk_usage(existing).free
    need = estimate["zoo"] + estimate["scratch"]
    estimate["free"] = float(free)
    if need > free:
        raise ConfigError(
            f"--out {out}: the zoo needs about {need / 1e9:.2f} GB ({estimate['zoo'] / 1e9:.2f} GB of snapshots "
            f"+ {estimate['scratch'] / 1e9:.2f} GB scratch) but {free / 1e9:.2f} GB are free; free space, "
            "choose another --out, or lower --members, --snapshots or --epochs"
        )
    return estimate


def run_population(
    prepared: PreparedRun,
    *,
    on_progress: Callable[[dict], None] | None = None,
    fault: Callable[[str], None] | None = None,
) -> PopulationReport:
    """Trains a prepared run and writes its zoo to ``prepared.config.out``.

    Under JAX's multi-process runtime (``jax.distributed.initialize``), every process
    calls this with the same run: each trains its share of every cohort
    (:func:`assign_members`) and writes its rows of the cohort's parts, which Orbax
    commits collectively (:class:`~nwsjax.zoo.ZooWriter`); process 0 creates the zoo
    first and writes its tables last, between barriers (the timings recorded in
    zoo.json are process 0's). With ``config.resume`` the committed members of the
    interrupted run are kept and the others trained again.

    A full disk stops the run with a :class:`DiskFullError` that says how much space
    the rest needs; what was committed stays, and ``--resume`` continues once space
    is free. ``fault`` is passed to the :class:`~nwsjax.zoo.ZooWriter` (tests).
    """
    import jax

    config = prepared.config
    process, processes = jax.process_index(), jax.process_count()
    out = Path(config.out)
    options = dict(members_per_part=config.members_per_part, process=process, processes=processes, fault=fault)
    _barrier("nwsjax-prepared")  # every process has checked --out before process 0 changes it
    writer = None
    try:
        if process == 0 and not config.resume:  # prepare_run checked the folder
            if out.is_dir() and (config.overwrite or never_started(out)):
                shutil.rmtree(out)
            writer = ZooWriter(out, _zoo_config(prepared), **options)
        _barrier("nwsjax-created")
        writer = writer or ZooWriter(out, **options)
        report = train_population(
            prepared.members,
            prepared.datasets,
            writer,
            prepared.train,
            assigned=assign_members(prepared, process, processes),
            programs=prepared.programs,
            on_progress=on_progress,
        )
        _barrier("nwsjax-trained")
        if process == 0:
            _close(writer, prepared, report)
        else:
            writer.detach()
    except Exception as err:
        if writer is not None:
            writer.detach()
        if _disk_full(err):
            raise DiskFullError(_disk_full_message(prepared)) from None
        raise
    _barrier("nwsjax-closed")
    return report


def _zoo_config(prepared: PreparedRun) -> dict:
    """What zoo.json records of the run: its whole config, the strategy it resolved to, its datasets."""
    return {
        "run": dataclasses.asdict(prepared.config),
        "strategy": parse_strategy(prepared.train.strategy).name,
        "datasets": {name: dataset_record(ds) for name, ds in prepared.datasets.items()},
    }


def _close(writer: ZooWriter, prepared: PreparedRun, report: PopulationReport) -> None:
    """Writes the zoo's tables and marks it complete, with the run's timings in zoo.json."""
    writer.close(
        expected=len(prepared.members),
        **report.record(),
        processes=writer.processes,
        resumed=prepared.config.resume,
    )


def _disk_full(err: BaseException) -> bool:
    """Whether ``err`` (or what caused it, e.g. inside an Orbax write) is a full disk or quota."""
    import errno

    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(err) or "Disk quota exceeded" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def _disk_full_message(prepared: PreparedRun) -> str:
    """One line: the disk is full, how much the rest of the run needs, and how to go on."""
    out = Path(prepared.config.out).absolute()
    estimate = prepared.disk or disk_estimate(prepared)
    left = 1 - len(committed_members(out)) / max(len(prepared.members), 1)
    need = estimate["zoo"] * left + estimate["scratch"]
    existing = next(p for p in [out, *out.parents] if p.exists())
    free = shutil.disk_usage(existing).free
    return (
        f"--out {out}: disk full while writing the zoo ({free / 1e6:.1f} MB free); the rest of the run needs "
        f"about {need / 1e6:.1f} MB; free space, then continue with --resume --out {prepared.config.out} "
        "(committed members are kept)"
    )


def assign_members(prepared: PreparedRun, process: int, processes: int) -> list[int]:
    """The member ids process ``process`` of ``processes`` trains.

    The members of every program are dealt round-robin, so each process gets an equal
    share of each program (and no program is compiled by one process only). Returns
    sorted ids.
    """
    return sorted(i for program in prepared.programs for i in program.members[process::processes])


def _barrier(name: str) -> None:
    """Waits for every process of a multi-process run (no-op with one process)."""
    import jax

    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def dataset_record(dataset: Dataset) -> dict:
    """A dataset's summary plus a fingerprint of its arrays (what a resumed run must find again)."""
    digest = hashlib.sha256()
    for array in (dataset.train_images, dataset.train_labels, dataset.val_images, dataset.val_labels,
                  dataset.test_images, dataset.test_labels):
        digest.update(np.ascontiguousarray(array).data)
    return dict(dataset.summary(), sha256=digest.hexdigest())


def _check_same_data(prepared: PreparedRun) -> None:
    stored = read_info(prepared.config.out, running=True)["config"].get("datasets", {})
    for name, dataset in prepared.datasets.items():
        before = stored.get(name, {}).get("sha256")
        if before != dataset_record(dataset)["sha256"]:
            raise ConfigError(
                f"--resume {prepared.config.out}: dataset {name} is not the data the run started with; "
                "restore that data (or its cache) or start a new run"
            )


# Settings that do not change what a run computes: a resumed run may give them anew.
_RESUME_FREE = {"out", "resume", "cache_dir", "overwrite"}


def resume_config(out: str, given: Mapping[str, Any]) -> RunConfig:
    """The config of the interrupted run in ``out``, for ``--resume``.

    ``given``: the settings typed with ``--resume`` (None for those left out). They
    may repeat the stored ones; one that differs is an error, as the resumed zoo would
    no longer be one run.
    """
    if given.get("overwrite"):
        raise ConfigError("--resume and --overwrite contradict each other; pass one of them")
    if never_started(out):
        # Killed before its zoo.json was written: nothing was trained, the run starts over.
        return run_config(**dict(given, out=str(out), resume=None, overwrite=None))
    run = read_info(out, running=True).get("config", {}).get("run")
    if not isinstance(run, dict):
        raise ConfigError(f"--resume {out}: this zoo holds no population.py run settings; start a new run instead")
    try:
        stored = RunConfig.from_record(run)
    except (TypeError, ValueError, KeyError) as err:
        raise ConfigError(f"--resume {out}: its stored run settings cannot be read ({err}); start a new run instead") from None
    for key, value in given.items():
        if value is None or key in _RESUME_FREE:
            continue
        value = tuple(value) if isinstance(value, list) else value
        before = flat_value(stored, key)
        if value != before:
            flag = "--" + key.replace("_", "-").replace("datasets", "dataset").replace("pins", "set")
            raise ConfigError(
                f"--resume {out}: {flag} {value!r} differs from the interrupted run's {before!r}; "
                f"drop {flag} (a resumed run keeps its settings)"
            )
    cache_dir = given.get("cache_dir") if given.get("cache_dir") is not None else stored.cache_dir
    return dataclasses.replace(stored, out=str(out), resume=True, overwrite=False, cache_dir=cache_dir)


UNTRAINED_BELOW = 0.2
"""Final test accuracy under which a network counts as one that did not train: twice the
chance level of the ten-class datasets (the reference left such networks out of its zoo)."""


def did_not_train(members: pd.DataFrame, below: float = UNTRAINED_BELOW) -> pd.Series:
    """Which networks did not train: final test accuracy under ``below``, or none (diverged).

    Returns a boolean Series on ``members``' index. ``meta.py --min-test-acc`` with the same
    number leaves these networks out.
    """
    acc = members.test_acc.astype(float)
    return ~(acc >= below)


def summary_table(members: pd.DataFrame, report: PopulationReport) -> str:
    """Test accuracy per dataset, how many networks did not train, and the run's time and
    throughput, as text."""
    lines = [
        f"{'dataset':<16}{'members':>8}{'diverged':>9}{'untrained':>10}"
        f"{'median':>8}{'q25':>8}{'q75':>8}{'min':>8}{'max':>8}"
    ]
    untrained = did_not_train(members)
    for name, group in members.groupby("dataset"):
        acc = group.test_acc.to_numpy(float)
        q = np.nanpercentile(acc, [50, 25, 75, 0, 100]) if np.isfinite(acc).any() else [np.nan] * 5
        diverged = int((group.status == "diverged").sum())
        lines.append(
            f"{name:<16}{len(group):>8}{diverged:>9}{int(untrained[group.index].sum()):>10}"
            + "".join(f"{v:>8.3f}" for v in q)
        )
    compile_s = sum(report.compile_seconds.values())
    padded = sum(label.startswith("pad-") for label in report.programs)
    lines += [
        "",
        f"test accuracy: median {np.nanmedian(members.test_acc):.3f} over {len(members)} members "
        f"(chance 0.100)",
        f"{int(untrained.sum())} members did not train (test accuracy under {UNTRAINED_BELOW:.2f}, twice "
        f"chance); meta.py --min-test-acc {UNTRAINED_BELOW:g} leaves them out",
        f"time {report.seconds:.1f} s (compile {compile_s:.1f} s over {len(report.compile_seconds)} programs), "
        f"strategy {report.strategy}",
        f"{len(report.programs)} programs ({padded} padded) for {len({p for v in report.programs.values() for p in v})} "
        f"architectures x batch sizes; {100 * report.useful_flop_fraction:.1f}% of computed FLOPs useful",
        f"throughput {report.steps_per_second:.1f} model-steps/s, "
        f"{report.images / max(report.seconds, 1e-9):.0f} images/s, "
        f"utilization {100 * report.utilization:.1f}% of member-steps useful",
    ]
    return "\n".join(lines)


def split_list(items: Sequence[str] | None) -> list[str] | None:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]`` (options given repeatedly or comma-separated)."""
    if items is None:
        return None
    return [part.strip() for item in items for part in item.split(",") if part.strip()]
