"""The population trainer: many NWS networks trained together, snapshots written to a zoo.

Members that share static shapes (architecture and batch size) form a *cohort*; a
cohort trains in ``slots`` (its width on the device) as one compiled program over
stacked parameters, with per-member hyper-parameters as arrays (:class:`step.Knobs`).

A cohort advances in *rounds*. A round is a run of steps that crosses no member's
epoch boundary: its length is the fewest steps any active member has left in its
current epoch, so every member's epoch ends exactly at the end of some round. After a
round the host handles the members whose epoch ended: validation and test accuracy,
learning-rate decay, an export of the weights, early stopping. A finished member's
slot is refilled at once with the next pending member of the cohort, so the device
keeps working on useful members.

Exports (the initialization and the end of every epoch) go to an append-only spill
file per member; when a member finishes, the reference's K evenly spaced exports
(``round(linspace(1, n_exports, K))``) are kept and written with the member's cohort
to an Orbax checkpoint (see :mod:`nwsjax.zoo`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nwsjax import optim, step
from nwsjax.data import Dataset
from nwsjax.errors import ConfigError
from nwsjax.model import Architecture, MemberShape, NWSNet
from nwsjax.padding import crop
from nwsjax.programs import POLICIES, CostModel, Program, part_label, plan_programs, train_flops
from nwsjax.space import MemberConfig, option_index
from nwsjax.stopping import StoppingConfig, stop_reason
from nwsjax.strategy import Strategy, default_strategy, map_members
from nwsjax.zoo import Spill, ZooWriter

__all__ = ["TrainConfig", "PopulationReport", "train_population", "plan_population"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How a population is trained (the members' own hyper-parameters live in MemberConfig).

    Attributes:
      stopping: epochs and early-stopping rules, per member.
      snapshots: K, snapshots kept per member (the reference: 20).
      max_slots: most members of one cohort on the device at once.
      strategy: execution strategy; None chooses per backend.
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
    strategy: Strategy | None = None
    eval_chunk: int = 500
    devices: int = 1
    memory_budget: float | None = None
    compact: bool = True
    pad_architectures: str = "auto"
    cost: CostModel | None = None

    def __post_init__(self):
        if self.pad_architectures not in POLICIES:
            raise ConfigError(f"pad_architectures={self.pad_architectures!r}: choose one of {', '.join(POLICIES)}")
        if self.snapshots < 1:
            raise ConfigError(f"snapshots={self.snapshots}: need at least 1")
        if self.max_slots < 1:
            raise ConfigError(f"max_slots={self.max_slots}: need at least 1")
        if self.devices < 1:
            raise ConfigError(f"devices={self.devices}: need at least 1")


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

    def add_cohort(self, label: str, cohort: _Cohort) -> None:
        """Adds what one trained cohort measured."""
        self.compile_seconds[label] = cohort.compile_seconds
        self.footprint_bytes[label] = cohort.footprint
        self.slots[label] = cohort.initial_slots
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


cohort_label = part_label  # a member's zoo part: its own architecture, batch size and classes


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


@dataclasses.dataclass
class _Slot:
    """Host-side bookkeeping of the member training in one slot."""

    member: int
    config: MemberConfig
    arch: Architecture  # the member's own (a padded program computes a larger one)
    part: str  # the zoo part it is stored in
    placement: _Placement
    steps_per_epoch: int
    spill: Spill
    epoch: int = 0  # epochs completed
    position: int = 0  # steps done in the current epoch
    steps: int = 0  # steps done in total
    loss_sum: float = 0.0
    correct_sum: float = 0.0
    val_history: list = dataclasses.field(default_factory=list)
    curves: list = dataclasses.field(default_factory=list)
    started: float = dataclasses.field(default_factory=time.perf_counter)


class _Cohort:
    """Trains the members of one cohort, refilling slots as members finish."""

    def __init__(self, program: Program, member_ids, members, data, placements, config, strategy, writer, progress,
                 width, classes):
        self.label = program.label
        self.program = program
        self.classes = classes
        whole = program.members
        self.pending = list(member_ids)
        self.members = members
        self.data = data
        self.placements = placements
        self.config = config
        self.strategy = strategy
        self.writer = writer
        self.progress = progress
        self.arch = program.arch
        self.batch_size = members[member_ids[0]].batch_size
        self.model = NWSNet(self.arch, conv_impl=strategy.conv, padded=program.padded)
        width = min(width, config.max_slots)  # the whole cohort's: a resumed rest trains in the same program
        # Whole slots per device, and for looped strategies at least 2: with one, XLA drops
        # the trip-count-1 member loop and fuses the step differently (float32-apart
        # weights). With 2 or more every member runs the same loop body at any width,
        # so results are bitwise independent of population size, devices and resumption.
        self.min_per_device = 1 if strategy.batching == "vmap" else 2
        self.n_slots = max(self.min_per_device, -(-width // config.devices)) * config.devices
        # Shapes and specializations come from the whole cohort (``whole``: every process's
        # members, committed ones included), so a resumed rest or one process's share
        # compiles the very program the uninterrupted run did.
        used = {members[i].dataset for i in whole}
        self.static = shared_knobs([members[i] for i in whole])
        self.max_steps = max(placements[d].train[1] // self.batch_size for d in used)
        self.eval_plans = (
            eval_plan([placements[d].val[1] for d in used], config.eval_chunk),
            eval_plan([placements[d].test[1] for d in used], config.eval_chunk),
        )
        self.compile_seconds = 0.0
        self.compactions = 0
        self.footprint = 0
        self.member_steps = 0
        self.slot_steps = 0
        self.images = 0
        self.useful_flops = 0.0  # training FLOPs of the members' own architectures
        self.computed_flops = 0.0  # training FLOPs computed by the program

    # -- compiled programs ---------------------------------------------------------
    def _build(self, knobs):
        model, strategy, data = self.model, self.strategy, self.data
        val_plan, test_plan = self.eval_plans

        static = self.static

        def fresh(knobs):
            return map_members(strategy, lambda k: step.init_member(model, k._replace(**static)), [knobs])

        def init(knobs, states, refill):
            keep = lambda f, s: jnp.where(refill.reshape(-1, *[1] * (f.ndim - 1)), f, s)  # noqa: E731
            return jax.tree.map(keep, fresh(knobs), states)

        def train(states, knobs, plans, offsets, positions, steps, n_steps, active):
            fn = lambda s, k, p, o, q, t, a, d: step.train_round(  # noqa: E731
                model, s, k._replace(**static), d, p, o, q, t, n_steps, a
            )
            return map_members(strategy, fn, [states, knobs, plans, offsets, positions, steps, active], [data])

        def evaluate(states, knobs, ranges, active):
            def one(s, k, r, a, d):
                k = k._replace(**static)
                val = step.evaluate(model, s, k, d, r[0], r[1], *val_plan, a)
                test = step.evaluate(model, s, k, d, r[2], r[3], *test_plan, a)
                return jnp.stack([val, test])

            return map_members(strategy, one, [states, knobs, ranges, active], [data])

        if self.config.devices > 1:
            init, train, evaluate = (_sharded(f, self.config.devices, shared) for f, shared in
                                     ((init, ()), (train, (6,)), (evaluate, ())))
        start = time.perf_counter()
        # The first states come from the refill program itself (every slot refilled over
        # zeros): one initialization program to compile per cohort, not two.
        zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(fresh, knobs))
        everyone = np.ones(len(jax.tree.leaves(knobs)[0]), bool)
        # XLA's default options: at backend optimization level 0 this program compiles in
        # a third of the time, but initial weights come out 1 ulp away from the
        # single-model reference's (which this program matches bitwise).
        self._init = jax.jit(init, donate_argnums=(1,)).lower(knobs, zeros, everyone).compile()
        states = self._init(knobs, zeros, everyone)
        self._programs = (train, evaluate)
        self.compile_seconds += time.perf_counter() - start
        self.footprint = 0
        self._compile(states, knobs)
        return states

    def _compile(self, states, knobs) -> None:
        """Compiles the train and evaluate programs for ``self.n_slots`` slots."""
        start = time.perf_counter()
        train, evaluate = self._programs
        self._train = jax.jit(train, donate_argnums=(0,))
        self._eval = jax.jit(evaluate)
        n = self.n_slots
        example = (
            states,
            knobs,
            np.zeros((n, self.max_steps, self.batch_size), np.int32),
            np.zeros(n, np.int32),
            np.zeros(n, np.int32),
            np.zeros(n, np.int32),
            np.int32(1),
            np.ones(n, bool),
        )
        self._train = self._train.lower(*example).compile()
        self._eval = self._eval.lower(states, knobs, np.zeros((n, 4), np.int32), np.ones(n, bool)).compile()
        self.compile_seconds += time.perf_counter() - start
        self.footprint = max(self.footprint, _footprint(self._train), _footprint(self._eval))

    def _compact(self, slots, states, knobs, plans, ranges):
        """A narrower cohort: the active slots moved to the front of a new, compiled width.

        For ``vmap`` cohorts, whose every slot costs a member's compute: once no member
        is pending and at most half the slots are busy, the busy ones move to a program
        half as wide (or narrower), paying one compile to stop computing idle slots.
        The members continue from their exact state (``map`` skips idle slots anyway).
        """
        devices = self.config.devices
        busy = [i for i, s in enumerate(slots) if s is not None]
        width = max(self.min_per_device, -(-len(busy) // devices)) * devices
        idle = [i for i, s in enumerate(slots) if s is None][: width - len(busy)]
        rows = np.array(busy + idle)
        take = lambda x: x[rows]  # noqa: E731
        states = jax.tree.map(take, states)
        knobs = jax.tree.map(take, knobs)
        self.n_slots = width
        self.compactions += 1
        self._compile(states, knobs)
        return [slots[i] for i in rows], states, knobs, plans[rows], ranges[rows]

    def _should_compact(self, slots) -> bool:
        busy = sum(s is not None for s in slots)
        return (
            self.config.compact
            and self.strategy.batching == "vmap"
            and not self.pending
            and 0 < busy <= self.n_slots // 2
            and self.n_slots > self.min_per_device * self.config.devices
        )

    # -- members entering and leaving slots -------------------------------------------
    def _start(self, member_id: int) -> _Slot:
        member = self.members[member_id]
        placement = self.placements[member.dataset]
        steps_per_epoch = placement.train[1] // member.batch_size
        if steps_per_epoch < 1:
            raise ConfigError(
                f"member {member_id}: dataset {member.dataset} has {placement.train[1]} training "
                f"images, fewer than batch_size={member.batch_size}; use a smaller batch size"
            )
        classes = self.classes[member.dataset]
        arch = Architecture.of(member, classes)
        return _Slot(member_id, member, arch, part_label(member, classes), placement, steps_per_epoch,
                     self.writer.spill(member_id))

    def _knobs(self, slot: _Slot) -> step.Knobs:
        return knobs_of(slot.config, MemberShape.of(slot.arch) if self.program.padded else None)

    def _plan(self, slot: _Slot) -> np.ndarray:
        order = step.epoch_order(
            slot.config.seed, slot.epoch, slot.placement.train[1], slot.config.batch_size
        )
        plan = np.zeros((self.max_steps, self.batch_size), np.int32)
        plan[: len(order)] = order
        return plan

    def _export(self, slot: _Slot, tree) -> None:
        """Appends the member's weights and statistics, at its own architecture, to its spill file."""
        self.writer.fault("export")
        if self.program.padded:
            tree = jax.tree.map(lambda collection: crop(collection, self.arch, slot.arch), tree,
                                is_leaf=lambda x: isinstance(x, dict))
        slot.spill.append(tree)

    def _finish(self, slot: _Slot, status: str, reason: str, final_tree) -> None:
        if status == "diverged":
            self._export(slot, final_tree)  # the last finite weights close the record
        self.writer.finish_member(
            slot.member, slot.config.to_dict(), cohort=slot.part, arch=slot.arch, spill=slot.spill,
            curves=slot.curves, epochs=slot.epoch, steps=slot.steps, status=status, reason=reason,
            snapshots=self.config.snapshots,
        )

    # -- the loop ------------------------------------------------------------------
    def _fill(self):
        """Slots filled from the pending members, their knobs stacked, programs compiled."""
        slots: list[_Slot | None] = [
            self._start(self.pending.pop(0)) if self.pending else None for _ in range(self.n_slots)
        ]
        knobs = _stack([self._knobs(s or slots[0]) for s in slots])
        return slots, knobs, self._build(knobs)

    def run(self) -> None:
        slots, knobs, states = self._fill()
        budget = self.config.memory_budget or default_memory_budget()
        devices = self.config.devices
        if self.footprint > budget and self.n_slots > self.min_per_device * devices:
            # Fewer members at once: the per-member share of the measured footprint
            # (an upper bound, as part of it is shared) decides how many fit.
            per_member = self.footprint / self.n_slots
            fit = max(self.min_per_device * devices, int(budget // per_member) // devices * devices)
            self.pending[:0] = [s.member for s in slots if s is not None]
            self.n_slots = fit
            slots, knobs, states = self._fill()
        self.initial_slots = self.n_slots
        host = jax.device_get((states.params, states.batch_stats))
        for i, slot in enumerate(slots):
            if slot is not None:
                self._export(slot, jax.tree.map(lambda x: x[i], host))
        plans = np.stack([self._plan(s) if s else np.zeros((self.max_steps, self.batch_size), np.int32) for s in slots])
        ranges = np.array([[*s.placement.val, *s.placement.test] if s else [0] * 4 for s in slots], np.int32)
        while any(s is not None for s in slots):
            active = np.array([s is not None for s in slots])
            n_steps = min(s.steps_per_epoch - s.position for s in slots if s is not None)
            states, out = self._train(
                states,
                knobs,
                plans,
                np.array([s.placement.train[0] if s else 0 for s in slots], np.int32),
                np.array([s.position if s else 0 for s in slots], np.int32),
                np.array([s.steps if s else 0 for s in slots], np.int32),
                np.int32(n_steps),
                active,
            )
            out = jax.device_get(out)
            computed = n_steps * (len(slots) if self.strategy.batching != "map" else int(active.sum()))
            self.slot_steps += computed
            self.computed_flops += computed * train_flops(self.arch, self.batch_size)
            ended = np.zeros(len(slots), bool)
            diverged = []
            for i, slot in enumerate(slots):
                if slot is None:
                    continue
                done = int(out.steps_done[i])
                slot.position += done
                slot.steps += done
                slot.loss_sum += float(out.loss_sum[i])
                slot.correct_sum += float(out.correct_sum[i])
                self.member_steps += done
                self.images += done * self.batch_size
                self.useful_flops += done * train_flops(slot.arch, self.batch_size)
                if not bool(out.healthy[i]):
                    diverged.append(i)
                elif slot.position == slot.steps_per_epoch:
                    ended[i] = True
            if ended.any() or diverged:
                host = jax.device_get((states.params, states.batch_stats))
            if ended.any():
                accuracy = jax.device_get(self._eval(states, knobs, ranges, ended))
            refill = np.zeros(len(slots), bool)
            for i, slot in enumerate(slots):
                if slot is None or not (ended[i] or i in diverged):
                    continue
                tree = jax.tree.map(lambda x: x[i], host)
                if i in diverged:
                    self._finish(slot, "diverged", "non-finite loss or weights", tree)
                else:
                    finished = self._end_epoch(slot, accuracy[i], tree)
                    if not finished:
                        plans[i] = self._plan(slot)
                        knobs.lrate[i] = optim.epoch_lrate(slot.config.lrate, slot.epoch)
                        continue
                slots[i] = None
                if self.pending:
                    slots[i] = self._start(self.pending.pop(0))
                    knobs = _replace(knobs, i, self._knobs(slots[i]))
                    plans[i] = self._plan(slots[i])
                    ranges[i] = [*slots[i].placement.val, *slots[i].placement.test]
                    refill[i] = True
            if refill.any():
                states = self._init(knobs, states, refill)
                host = jax.device_get((states.params, states.batch_stats))
                for i in np.flatnonzero(refill):
                    self._export(slots[i], jax.tree.map(lambda x: x[i], host))
            if self._should_compact(slots):
                slots, states, knobs, plans, ranges = self._compact(slots, states, knobs, plans, ranges)
            self.progress(self, slots)

    def _end_epoch(self, slot: _Slot, accuracy, tree) -> bool:
        """Records the epoch that just ended; returns True when the member is finished."""
        n_val, n_test = slot.placement.val[1], slot.placement.test[1]
        steps = slot.steps_per_epoch
        slot.epoch += 1
        slot.curves.append(
            {
                "member": slot.member,
                "epoch": slot.epoch,
                "steps": slot.steps,
                "lrate": optim.epoch_lrate(slot.config.lrate, slot.epoch - 1),
                "train_loss": slot.loss_sum / steps,
                "train_acc": slot.correct_sum / (steps * slot.config.batch_size),
                "val_acc": float(accuracy[0]) / max(n_val, 1),
                "test_acc": float(accuracy[1]) / max(n_test, 1),
            }
        )
        slot.val_history.append(slot.curves[-1]["val_acc"])
        slot.position, slot.loss_sum, slot.correct_sum = 0, 0.0, 0.0
        self._export(slot, tree)
        reason = stop_reason(slot.val_history, self.config.stopping)
        if reason is not None:
            self._finish(slot, "finished", reason, tree)
            return True
        return False


def eval_plan(counts: Sequence[int], most: int) -> tuple[int, int]:
    """``(chunk, n_chunks)`` that evaluate splits of ``counts`` images in static chunks.

    The fewest chunks of at most ``most`` images, then the smallest chunk that covers
    the largest split: a 359-image split is one chunk of 359, not 500 with 141 padded.
    """
    largest = max(max(counts), 1)
    n_chunks = math.ceil(largest / most)
    return math.ceil(largest / n_chunks), n_chunks


def _footprint(compiled) -> int:
    """Bytes a compiled program holds at once: arguments, outputs and temporaries."""
    stats = compiled.memory_analysis()
    if stats is None:
        return 0
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
               - stats.alias_size_in_bytes)


def default_memory_budget() -> float:
    """80% of the first local device's memory; on CPU half of the host's RAM."""
    stats = jax.local_devices()[0].memory_stats() or {}
    if "bytes_limit" in stats:
        return 0.8 * stats["bytes_limit"]
    return 0.5 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _sharded(fn: Callable, devices: int, shared: tuple[int, ...]) -> Callable:
    """``fn`` over a ``("pop",)`` mesh: member-axis arguments split across devices.

    Every argument is split along its leading (member) axis except those at
    positions ``shared`` (scalars), and the dataset, which ``fn`` closes over and
    every device holds whole.
    """
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh(
        (devices,), ("pop",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.local_devices()[:devices]
    )

    def wrapped(*args):
        specs = tuple(
            P() if i in shared or a is None else jax.tree.map(lambda _: P("pop"), a)
            for i, a in enumerate(args)
        )
        return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=P("pop"), check_vma=False)(*args)

    return wrapped


def _snapshot_shapes(member: MemberConfig, num_classes: int, snapshots: int):
    """``{"params", "batch_stats"}`` of ``jax.ShapeDtypeStruct`` ``[snapshots, *shape]`` for ``member``."""
    model = NWSNet(Architecture.of(member, num_classes))
    state = jax.eval_shape(lambda k: step.init_member(model, k), knobs_of(member))
    stacked = lambda x: jax.ShapeDtypeStruct((snapshots, *x.shape), x.dtype)  # noqa: E731
    return {"params": jax.tree.map(stacked, state.params), "batch_stats": jax.tree.map(stacked, state.batch_stats)}


def _replace(knobs: step.Knobs, index: int, new: step.Knobs) -> step.Knobs:
    for stacked, value in zip(jax.tree.leaves(knobs), jax.tree.leaves(new)):
        stacked[index] = value
    return knobs


def train_population(
    members: Sequence[MemberConfig],
    datasets: Mapping[str, Dataset],
    writer: ZooWriter,
    config: TrainConfig | None = None,
    *,
    assigned: Sequence[int] | None = None,
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
      on_progress: called after every round with a dict of counters (for progress bars).

    Returns:
      timings and work counts; every assigned member is committed to the zoo when this
      returns (:meth:`ZooWriter.close` then writes the tables).
    """
    config = config or TrainConfig()
    check_devices(config.devices)
    missing = sorted({m.dataset for m in members} - set(datasets))
    if missing:
        raise ConfigError(f"members use datasets that were not loaded: {', '.join(missing)}")
    strategy = config.strategy or default_strategy()
    data, placements = place_datasets(datasets)
    classes = {name: dataset.num_classes for name, dataset in datasets.items()}
    programs = plan_population(members, {name: p.train[1] for name, p in placements.items()}, classes, config)
    mine = set(range(len(members)) if assigned is None else assigned)
    start = time.perf_counter()
    report = PopulationReport(0.0, {}, {}, {}, {}, 0, 0, 0, len(mine), strategy.name)
    counters = {"members": report.members, "finished": 0, "cohorts": len(programs), "cohort": 0}
    resumed = len(mine & set(writer.committed))

    def progress(cohort: _Cohort, slots) -> None:
        counters.update(
            active=sum(s is not None for s in slots),
            member_steps=report.member_steps + cohort.member_steps,
            member_epochs=writer.committed_epochs + writer.epochs_recorded + sum(s.epoch for s in slots if s),
            finished=resumed + writer.members_added,
            seconds=time.perf_counter() - start,
        )
        if on_progress:
            on_progress(counters)

    # Every process goes through every program and part in one order: flushing is collective.
    for number, program in enumerate(programs):
        counters["cohort"] = number + 1
        share = [i for i in program.members if i in mine]
        ids = [i for i in share if i not in writer.committed]
        parts = _parts(program, members, classes)
        report.programs[program.label] = sorted(parts)
        if ids:
            cohort = _Cohort(program, ids, members, data, placements, config, strategy, writer, progress,
                             len(share), classes)
            cohort.run()
            report.add_cohort(program.label, cohort)
        for label in sorted(parts):
            first = members[parts[label]]
            like = _snapshot_shapes(first, classes[first.dataset], config.snapshots) if writer.processes > 1 else None
            writer.flush_cohort(label, like=like)
    writer.wait()
    report.seconds = time.perf_counter() - start
    return report


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
