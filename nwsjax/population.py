"""The population trainer: many NWS networks trained together, snapshots written to a zoo.

The members trained by one compiled program form a *cohort*: members of one batch size
and batch-norm setting, at one architecture or padded into a larger one
(:mod:`nwsjax.programs` plans which, :mod:`nwsjax.padding` pads). A cohort trains in
``slots`` (its width on the device) over stacked parameters, with per-member
hyper-parameters as arrays (:class:`step.Knobs`); its compiled programs are
:mod:`nwsjax.cohort`, its host-side schedule :mod:`nwsjax.schedule`.

A cohort advances in *rounds*. A round is a run of steps that crosses no member's
epoch boundary: its length is the fewest steps any active member has left in its
current epoch, so every member's epoch ends exactly at the end of some round. After a
round the host handles the members whose epoch ended: validation and test accuracy,
learning-rate decay, an export of the weights, early stopping. A finished member's
slot is refilled at once with the next pending member of the cohort, so the device
keeps working on useful members.

Exports (the initialization and the end of every epoch) go to an append-only spill
file per member; when a member finishes, the reference's K evenly spaced exports
(``round(linspace(1, n_exports, K))``) are kept, at the member's own architecture, and
written with the other members of its zoo part (its architecture and batch size) to an
Orbax checkpoint (see :mod:`nwsjax.zoo`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nwsjax import optim, step
from nwsjax.cohort import CohortPrograms, CohortShape, default_memory_budget, eval_plan
from nwsjax.data import Dataset
from nwsjax.errors import ConfigError
from nwsjax.model import Architecture, MemberShape, NWSNet
from nwsjax.padding import crop
from nwsjax.programs import POLICIES, CostModel, Program, part_label, plan_programs, train_flops
from nwsjax.space import MemberConfig, option_index
from nwsjax.schedule import (Events, RoundInputs, Schedule, Slot, absorb, busy, close_epoch, compact, epoch_plan,
                             next_epoch, round_inputs, seat, vacate)
from nwsjax.stopping import StoppingConfig, stop_reason
from nwsjax.strategy import Strategy, parse_strategy
from nwsjax.zoo import ZooWriter

__all__ = ["TrainConfig", "PopulationReport", "train_population", "plan_population"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How a population is trained (the members' own hyper-parameters live in MemberConfig).

    Attributes:
      stopping: epochs and early-stopping rules, per member.
      snapshots: K, snapshots kept per member (the reference: 20).
      max_slots: most members of one cohort on the device at once.
      strategy: execution strategy by name (``"auto"``: the backend's default, or e.g.
        ``"vmap+im2col"``, :func:`nwsjax.strategy.parse_strategy`).
      eval_chunk: most images per evaluation chunk (:func:`eval_plan`).
      devices: devices the cohort's slots are sharded over (a ``("pop",)`` mesh with
        ``shard_map``; each device runs the strategy over its local slots).
      memory_budget: bytes a cohort program may hold (None: 80% of device memory, half
        the RAM on CPU). A cohort whose measured footprint is larger trains fewer
        members at once, refilling slots as members finish, instead of failing.
      compact: ``vmap`` cohorts move their members to a narrower program (one compile)
        when no member is pending and at most half the slots are busy.
      pad_architectures: ``"auto"``, ``"all"`` or ``"none"``: which members of different
        architectures share a padded program (:mod:`nwsjax.programs`).
      cost: the cost model ``"auto"`` plans with (None: the backend's).
    """

    stopping: StoppingConfig = StoppingConfig()
    snapshots: int = 20
    max_slots: int = 256
    strategy: str = "auto"
    eval_chunk: int = 500
    devices: int = 1
    memory_budget: float | None = None
    compact: bool = True
    pad_architectures: str = "auto"
    cost: CostModel | None = None

    def __post_init__(self):
        if self.strategy != "auto":  # "auto" asks JAX for its backend: not before a multi-host run joins
            parse_strategy(self.strategy)  # a ConfigError names a bad one
        if self.pad_architectures not in POLICIES:
            raise ConfigError(f"pad_architectures={self.pad_architectures!r}: choose one of {', '.join(POLICIES)}")
        if self.snapshots < 1:
            raise ConfigError(f"snapshots={self.snapshots}: need at least 1")
        if self.max_slots < 1:
            raise ConfigError(f"max_slots={self.max_slots}: need at least 1")
        if self.devices < 1:
            raise ConfigError(f"devices={self.devices}: need at least 1")

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> TrainConfig:
        """The config ``dataclasses.asdict`` gave ``record`` (as zoo.json stores it).

        Records written before the strategy was a name (a ``Strategy`` as a dict, or
        None for the backend's default) are read too.
        """
        values = dict(record)
        values["stopping"] = StoppingConfig(**values.get("stopping", {}))
        strategy = values.get("strategy")
        if strategy is None or isinstance(strategy, Mapping):
            values["strategy"] = Strategy(**strategy).name if strategy else "auto"
        if values.get("cost") is not None:
            values["cost"] = CostModel(**values["cost"])
        return cls(**values)


def check_devices(devices: int) -> None:
    """ConfigError unless this process has ``devices`` local devices (a config names them, JAX has them)."""
    available = len(jax.local_devices())
    if devices > available:
        hint = (
            "; on CPU set XLA_FLAGS=--xla_force_host_platform_device_count=N before starting"
            if jax.default_backend() == "cpu"
            else ""
        )
        raise ConfigError(f"devices={devices}: {available} available{hint}")


@dataclasses.dataclass
class PopulationReport:
    """What a finished run measured."""

    seconds: float
    compile_seconds: dict[str, float]
    footprint_bytes: dict[str, int]  # per cohort: its program's measured memory at its width
    slots: dict[str, int]  # per cohort: members trained at once (at the start)
    compactions: dict[str, int]  # per cohort: times a vmap cohort moved to a narrower program
    member_steps: int  # steps taken by members (useful work)
    slot_steps: int  # steps computed over all slots, finished members included
    images: int  # training images processed by members
    members: int
    strategy: str
    programs: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # program -> zoo parts it trained
    useful_flops: float = 0.0  # training FLOPs of the members' own architectures
    computed_flops: float = 0.0  # training FLOPs the programs computed (padding and idle slots included)

    @property
    def utilization(self) -> float:
        return self.member_steps / max(self.slot_steps, 1)

    @property
    def useful_flop_fraction(self) -> float:
        """Of the FLOPs computed, the fraction that were members' own (not padding, not idle slots)."""
        return self.useful_flops / self.computed_flops if self.computed_flops else 1.0

    def add_cohort(self, label: str, cohort: CohortStats) -> None:
        """Adds what one trained cohort measured."""
        self.compile_seconds[label] = cohort.compile_seconds
        self.footprint_bytes[label] = cohort.footprint
        self.slots[label] = cohort.slots
        self.compactions[label] = cohort.compactions
        self.member_steps += cohort.member_steps
        self.slot_steps += cohort.slot_steps
        self.images += cohort.images
        self.useful_flops += cohort.useful_flops
        self.computed_flops += cohort.computed_flops

    def record(self) -> dict:
        """What zoo.json keeps of the run: every field plus the utilization."""
        return dict(dataclasses.asdict(self), utilization=self.utilization,
                    useful_flop_fraction=self.useful_flop_fraction)

    @property
    def steps_per_second(self) -> float:
        return self.member_steps / max(self.seconds, 1e-9)


@dataclasses.dataclass(frozen=True)
class _Placement:
    """Where one dataset's splits sit in the concatenated device arrays."""

    train: tuple[int, int]  # (start, count)
    val: tuple[int, int]
    test: tuple[int, int]


def place_datasets(datasets: Mapping[str, Dataset]) -> tuple[step.DeviceData, dict[str, _Placement]]:
    """Concatenates every split of every dataset into one uint8 array on the device."""
    images, labels, placements, start = [], [], {}, 0
    for name in sorted(datasets):
        ds = datasets[name]
        ranges = []
        for x, y in (
            (ds.train_images, ds.train_labels),
            (ds.val_images, ds.val_labels),
            (ds.test_images, ds.test_labels),
        ):
            images.append(x)
            labels.append(y)
            ranges.append((start, len(y)))
            start += len(y)
        placements[name] = _Placement(*ranges)
    data = step.DeviceData(
        jnp.asarray(np.concatenate(images)), jnp.asarray(np.concatenate(labels).astype(np.int32))
    )
    return data, placements


def knobs_of(member: MemberConfig, shape: MemberShape | None = None) -> step.Knobs:
    """The member's dynamic hyper-parameters (learning rate of epoch 0); ``shape`` in a padded program."""
    return step.Knobs(
        seed=np.int32(member.seed),
        optimizer=np.int32(option_index("optimizer", member.optimizer)),
        activation=np.int32(option_index("activation", member.activation)),
        initialization=np.int32(option_index("initialization", member.initialization)),
        augmentation=np.bool_(member.augmentation == "on"),
        lrate=np.float32(optim.epoch_lrate(member.lrate, 0)),
        shape=shape,
    )


def shared_knobs(members: Sequence[MemberConfig]) -> dict:
    """The categorical knobs every one of ``members`` has alike, as static Python values.

    A cohort compiles them into its programs instead of selecting per member at run
    time: a static activation skips computing all four (about 4 ms of a 30 ms CPU step)
    and each static choice leaves a branch out of the compile. ``{}`` where all differ.
    Returns e.g. ``{"optimizer": 0, "augmentation": False}``.
    """
    static = {}
    for field in ("optimizer", "activation", "initialization", "augmentation"):
        values = {getattr(knobs_of(m), field).item() for m in members}
        if len(values) == 1:
            value = values.pop()
            static[field] = np.bool_(value) if field == "augmentation" else int(value)
    return static


def _stack(items: Sequence[Any]):
    return jax.tree.map(lambda *xs: np.stack(xs), *items)


@dataclasses.dataclass(frozen=True)
class _Run:
    """What every cohort of a run shares."""

    members: Sequence[MemberConfig]
    classes: Mapping[str, int]  # per dataset name
    placements: Mapping[str, _Placement]
    data: step.DeviceData
    config: TrainConfig
    strategy: Strategy
    writer: ZooWriter


@dataclasses.dataclass
class CohortStats:
    """What one cohort measured (:meth:`PopulationReport.add_cohort`)."""

    compile_seconds: float = 0.0
    footprint: int = 0  # bytes of its largest program
    slots: int = 0  # members trained at once, at the start
    compactions: int = 0  # times a vmap cohort moved to a narrower program
    member_steps: int = 0
    slot_steps: int = 0
    images: int = 0
    useful_flops: float = 0.0  # training FLOPs of the members' own architectures
    computed_flops: float = 0.0  # training FLOPs the program computed


def _width(members: int, run: _Run) -> int:
    """Slots for ``members`` at once: whole slots per device, and for looped strategies at least 2.

    With one, XLA drops the trip-count-1 member loop and fuses the step differently
    (float32-apart weights). With 2 or more every member runs the same loop body at
    any width, so results are bitwise independent of population size, devices and
    resumption.
    """
    least = 1 if run.strategy.batching == "vmap" else 2
    return max(least, -(-members // run.config.devices)) * run.config.devices


def _cohort_shape(run: _Run, program: Program) -> CohortShape:
    """The cohort's static shapes and specializations, from the whole program.

    ``program.members`` are every process's members, committed ones included, so a
    resumed rest or one process's share compiles the very program the uninterrupted
    run did.
    """
    members = [run.members[i] for i in program.members]
    used = {m.dataset for m in members}
    batch_size = members[0].batch_size
    placements = [run.placements[d] for d in used]
    return CohortShape(
        model=NWSNet(program.arch, conv_impl=run.strategy.conv, padded=program.padded),
        static=shared_knobs(members),
        batch_size=batch_size,
        max_steps=max(p.train[1] // batch_size for p in placements),
        eval_plans=(eval_plan([p.val[1] for p in placements], run.config.eval_chunk),
                    eval_plan([p.test[1] for p in placements], run.config.eval_chunk)),
        devices=run.config.devices,
    )


def _new_slot(run: _Run, member_id: int) -> Slot:
    """The slot of a member starting to train (its spill file created empty)."""
    member = run.members[member_id]
    placement = run.placements[member.dataset]
    steps_per_epoch = placement.train[1] // member.batch_size
    if steps_per_epoch < 1:
        raise ConfigError(
            f"member {member_id}: dataset {member.dataset} has {placement.train[1]} training "
            f"images, fewer than batch_size={member.batch_size}; use a smaller batch size"
        )
    classes = run.classes[member.dataset]
    return Slot(member_id, member, Architecture.of(member, classes), part_label(member, classes), placement,
                steps_per_epoch, run.writer.spill(member_id))


def _slot_knobs(program: Program, slot: Slot) -> step.Knobs:
    return knobs_of(slot.config, MemberShape.of(slot.arch) if program.padded else None)


def _seat_first(run: _Run, program: Program, pending: Sequence[int], width: int, shape: CohortShape) -> Schedule:
    """A schedule of ``width`` slots holding the first ``width`` pending members."""
    slots = [_new_slot(run, i) for i in pending[:width]]
    slots += [None] * (width - len(slots))
    empty = np.zeros((shape.max_steps, shape.batch_size), np.int32)
    return Schedule(
        slots=tuple(slots),
        pending=tuple(pending[width:]),
        knobs=_stack([_slot_knobs(program, s or slots[0]) for s in slots]),
        plans=np.stack([epoch_plan(s, shape.max_steps, shape.batch_size) if s else empty for s in slots]),
        ranges=np.array([[*s.placement.val, *s.placement.test] if s else [0] * 4 for s in slots], np.int32),
    )


def _open_cohort(run: _Run, program: Program, ids: Sequence[int], width: int):
    """Compiled programs, first states and schedule of a cohort: ``(programs, states, schedule)``.

    ``width``: this process's share of the whole program (committed members included),
    so a resumed rest trains at the width of the uninterrupted run. A cohort whose
    measured footprint exceeds the memory budget trains fewer members at once,
    refilling slots as members finish, instead of failing.
    """
    shape = _cohort_shape(run, program)
    n = _width(min(width, run.config.max_slots), run)
    spent = 0.0
    while True:
        schedule = _seat_first(run, program, ids, n, shape)
        programs = CohortPrograms(shape, run.strategy, run.data)
        programs.compile_seconds = spent
        states = programs.first_states(schedule.knobs)
        programs.compile(states, schedule.knobs)
        budget = run.config.memory_budget or default_memory_budget()
        if programs.footprint <= budget or n <= _width(1, run):
            return programs, states, schedule
        # The per-member share of the measured footprint (an upper bound, as part of it
        # is shared) decides how many fit.
        devices = run.config.devices
        n = max(_width(1, run), int(budget // (programs.footprint / n)) // devices * devices)
        spent = programs.compile_seconds


def _export(run: _Run, program: Program, slot: Slot, tree) -> None:
    """Appends ``tree`` (params, batch_stats), cut to the member's own architecture, to its spill file."""
    run.writer.fault("export")
    if program.padded:
        tree = tuple(crop(collection, program.arch, slot.arch) for collection in tree)
    slot.spill.append(tree)


def _export_seated(run: _Run, program: Program, states, schedule: Schedule, rows: np.ndarray) -> None:
    """Exports the initial weights of the members just seated at ``rows`` (bool ``[n]``)."""
    host = jax.device_get((states.params, states.batch_stats))
    for i in np.flatnonzero(rows):
        _export(run, program, schedule.slots[i], jax.tree.map(lambda x: x[i], host))


def _finish(run: _Run, slot: Slot, status: str, reason: str) -> None:
    run.writer.finish_member(
        slot.member, slot.config.to_dict(), cohort=slot.part, arch=slot.arch, spill=slot.spill,
        curves=slot.curves, epochs=slot.epoch, steps=slot.steps, status=status, reason=reason,
        snapshots=run.config.snapshots,
    )


def _handle_events(run: _Run, program: Program, programs: CohortPrograms, states, schedule: Schedule,
                   events: Events):
    """After a round: epochs closed (evaluated, exported, maybe stopped), diverged members
    finished, and every freed slot refilled from the pending members. Returns ``(states, schedule)``."""
    host = jax.device_get((states.params, states.batch_stats))
    if events.ended.any():
        correct = jax.device_get(programs.evaluate(states, schedule.knobs, schedule.ranges, events.ended))
    refill = np.zeros(len(schedule.slots), bool)
    for i in np.flatnonzero(events.ended | events.diverged):
        slot, tree = schedule.slots[i], jax.tree.map(lambda x: x[i], host)
        if events.diverged[i]:
            _export(run, program, slot, tree)  # the last finite weights close the record
            _finish(run, slot, "diverged", "non-finite loss or weights")
        else:
            slot = close_epoch(slot, correct[i])
            _export(run, program, slot, tree)
            reason = stop_reason(slot.val_history, run.config.stopping)
            if reason is None:
                schedule = next_epoch(schedule, i, slot)
                continue
            _finish(run, slot, "finished", reason)
        schedule = vacate(schedule, i)
        if schedule.pending:
            seated = _new_slot(run, schedule.pending[0])
            schedule = seat(schedule, i, seated, _slot_knobs(program, seated))
            refill[i] = True
    if refill.any():
        states = programs.init(schedule.knobs, states, refill)
        _export_seated(run, program, states, schedule, refill)
    return states, schedule


def _count(stats: CohortStats, program: Program, schedule: Schedule, inputs: RoundInputs, out, run: _Run) -> None:
    """Adds a round's work: member steps and their FLOPs, and what the program computed."""
    batch_size = schedule.plans.shape[2]
    for i, slot in enumerate(schedule.slots):
        if slot is not None:
            done = int(out.steps_done[i])
            stats.member_steps += done
            stats.images += done * batch_size
            stats.useful_flops += done * train_flops(slot.arch, batch_size)
    computed = int(inputs.n_steps) * (len(schedule.slots) if run.strategy.batching != "map" else int(inputs.active.sum()))
    stats.slot_steps += computed
    stats.computed_flops += computed * train_flops(program.arch, batch_size)


def _should_compact(run: _Run, schedule: Schedule) -> bool:
    """A ``vmap`` cohort, no member pending, at most half its slots busy: a narrower program pays."""
    busy_slots = sum(s is not None for s in schedule.slots)
    n = len(schedule.slots)
    return (run.config.compact and run.strategy.batching == "vmap" and not schedule.pending
            and 0 < busy_slots <= n // 2 and n > _width(1, run))


def train_cohort(run: _Run, program: Program, ids: Sequence[int], width: int,
                 progress: Callable[[CohortStats, Schedule], None]) -> CohortStats:
    """Trains the members ``ids`` of ``program`` to the end, writing each to the zoo as it finishes."""
    programs, states, schedule = _open_cohort(run, program, ids, width)
    stats = CohortStats(slots=len(schedule.slots))
    _export_seated(run, program, states, schedule, np.array([s is not None for s in schedule.slots]))
    while busy(schedule):
        inputs = round_inputs(schedule)
        states, out = programs.train(states, schedule.knobs, *inputs)
        schedule, events = absorb(schedule, jax.device_get(out))
        _count(stats, program, schedule, inputs, out, run)
        if events.ended.any() or events.diverged.any():
            states, schedule = _handle_events(run, program, programs, states, schedule, events)
        if _should_compact(run, schedule):
            busy_slots = sum(s is not None for s in schedule.slots)
            schedule, rows = compact(schedule, _width(busy_slots, run))
            states = jax.tree.map(lambda x: x[rows], states)
            programs.compile(states, schedule.knobs)
            stats.compactions += 1
        progress(stats, schedule)
    stats.compile_seconds, stats.footprint = programs.compile_seconds, programs.footprint
    return stats


def _snapshot_shapes(member: MemberConfig, num_classes: int, snapshots: int):
    """``{"params", "batch_stats"}`` of ``jax.ShapeDtypeStruct`` ``[snapshots, *shape]`` for ``member``."""
    model = NWSNet(Architecture.of(member, num_classes))
    state = jax.eval_shape(lambda k: step.init_member(model, k), knobs_of(member))
    stacked = lambda x: jax.ShapeDtypeStruct((snapshots, *x.shape), x.dtype)  # noqa: E731
    return {"params": jax.tree.map(stacked, state.params), "batch_stats": jax.tree.map(stacked, state.batch_stats)}


def train_population(
    members: Sequence[MemberConfig],
    datasets: Mapping[str, Dataset],
    writer: ZooWriter,
    config: TrainConfig | None = None,
    *,
    assigned: Sequence[int] | None = None,
    programs: Sequence[Program] | None = None,
    on_progress: Callable[[dict], None] | None = None,
) -> PopulationReport:
    """Trains the members and writes them to the zoo.

    Members already committed to the zoo (``writer.committed``: a resumed run) are
    skipped; the others train exactly as they would have in an uninterrupted run, as a
    cohort keeps its width (its number of slots) however few of its members are left.

    Args:
      members: the population; member ``i`` gets id ``i``.
      datasets: every dataset named by a member, prepared (``nwsjax.data.load_dataset``).
      writer: the zoo being written (:class:`nwsjax.zoo.ZooWriter`).
      config: training settings (None: the defaults).
      assigned: ids this process trains (a multi-host run's share); None: all.
      programs: the run's programs (:func:`plan_population`); None: planned here.
      on_progress: called after every round with a dict of counters (for progress bars).

    Returns:
      timings and work counts; every assigned member is committed to the zoo when this
      returns (:meth:`ZooWriter.close` then writes the tables).
    """
    config = config or TrainConfig()
    run = _prepare(members, datasets, writer, config)
    if programs is None:
        sizes = {name: placement.train[1] for name, placement in run.placements.items()}
        programs = plan_population(members, sizes, run.classes, config)
    mine = set(range(len(members)) if assigned is None else assigned)
    report = PopulationReport(0.0, {}, {}, {}, {}, 0, 0, 0, len(mine), run.strategy.name)
    progress = _Progress(report, writer, len(programs), len(mine & set(writer.committed)), on_progress)
    # Every process goes through every program and part in one order: flushing is collective.
    for number, program in enumerate(programs):
        progress.counters["cohort"] = number + 1
        share = [i for i in program.members if i in mine]
        ids = [i for i in share if i not in writer.committed]
        parts = _parts(program, members, run.classes)
        report.programs[program.label] = sorted(parts)
        if ids:
            report.add_cohort(program.label, train_cohort(run, program, ids, len(share), progress))
        for label in sorted(parts):
            first = members[parts[label]]
            like = _snapshot_shapes(first, run.classes[first.dataset], config.snapshots) if writer.processes > 1 else None
            writer.flush_cohort(label, like=like)
    writer.wait()
    report.seconds = progress.seconds()
    return report


def _prepare(members: Sequence[MemberConfig], datasets: Mapping[str, Dataset], writer: ZooWriter,
             config: TrainConfig) -> _Run:
    """Checks the devices and datasets, and puts the datasets on the device."""
    check_devices(config.devices)
    missing = sorted({m.dataset for m in members} - set(datasets))
    if missing:
        raise ConfigError(f"members use datasets that were not loaded: {', '.join(missing)}")
    data, placements = place_datasets(datasets)
    classes = {name: dataset.num_classes for name, dataset in datasets.items()}
    return _Run(members, classes, placements, data, config, parse_strategy(config.strategy), writer)


class _Progress:
    """The counters ``on_progress`` gets after every round (for progress bars)."""

    def __init__(self, report: PopulationReport, writer: ZooWriter, programs: int, resumed: int,
                 on_progress: Callable[[dict], None] | None):
        self.report, self.writer, self.resumed, self.on_progress = report, writer, resumed, on_progress
        self.counters = {"members": report.members, "finished": 0, "cohorts": programs, "cohort": 0}
        self.start = time.perf_counter()

    def seconds(self) -> float:
        return time.perf_counter() - self.start

    def __call__(self, cohort: CohortStats, schedule: Schedule) -> None:
        slots = [s for s in schedule.slots if s is not None]
        writer = self.writer
        self.counters.update(
            active=len(slots),
            member_steps=self.report.member_steps + cohort.member_steps,
            member_epochs=writer.committed_epochs + writer.epochs_recorded + sum(s.epoch for s in slots),
            finished=self.resumed + writer.members_added,
            seconds=self.seconds(),
        )
        if self.on_progress:
            self.on_progress(self.counters)


def plan_population(members: Sequence[MemberConfig], train_sizes: Mapping[str, int],
                    classes: Mapping[str, int], config: TrainConfig) -> list[Program]:
    """The programs of a run (:func:`nwsjax.programs.plan_programs`), each member weighted by its most steps.

    ``train_sizes`` and ``classes``: training images and classes per dataset name.
    """
    steps = [config.stopping.max_epochs * (train_sizes[m.dataset] // m.batch_size) for m in members]
    cost = config.cost or CostModel.for_backend(jax.default_backend())
    return plan_programs(members, classes, steps, config.pad_architectures, cost=cost, devices=config.devices)


def _parts(program: Program, members: Sequence[MemberConfig], classes: Mapping[str, int]) -> dict[str, int]:
    """The zoo parts a program's members are stored in: label -> its first member."""
    parts: dict[str, int] = {}
    for i in program.members:
        parts.setdefault(part_label(members[i], classes[members[i].dataset]), i)
    return parts
