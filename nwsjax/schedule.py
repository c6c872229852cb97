"""The host side of a cohort: which member sits in which slot, and where each one is.

A cohort advances in *rounds*: runs of steps that cross no member's epoch boundary
(the fewest steps any active member has left in its epoch), so every epoch ends
exactly at the end of some round. The :class:`Schedule` is the whole host state
between rounds; the functions here are pure (each returns a new schedule):

* :func:`round_inputs`: the next round's per-slot inputs;
* :func:`absorb`: a round's outputs counted into the slots, with the *events* it
  produced (epochs that ended, members that diverged);
* :func:`close_epoch`: a member's epoch recorded (its curve row);
* :func:`next_epoch`, :func:`vacate`, :func:`seat`: a slot moved on, emptied or refilled;
* :func:`compact`: the busy slots moved to a narrower width.

What the trainer does at an event (evaluate, export, write the member to the zoo)
lives in :mod:`nwsjax.population`; this module touches no device and no file.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import numpy as np

from nwsjax import optim, step
from nwsjax.model import Architecture
from nwsjax.space import MemberConfig

__all__ = ["Slot", "Schedule", "RoundInputs", "Events", "round_inputs", "absorb", "close_epoch", "next_epoch",
           "vacate", "seat", "compact", "busy"]


@dataclasses.dataclass(frozen=True)
class Slot:
    """One member training in a slot, as the host tracks it.

    Attributes:
      member: its id; config: its hyper-parameters; arch: its own architecture;
      part: the zoo part it is stored in.
      placement: ``(train, val, test)`` ``(start, count)`` of its dataset's splits in the device arrays.
      steps_per_epoch: its epoch length; spill: its export file (:class:`nwsjax.zoo.Spill`).
      epoch, position, steps: epochs completed, steps into the current epoch, steps in all.
      loss_sum, correct_sum: this epoch's sums so far; curves: a row per completed epoch.
    """

    member: int
    config: MemberConfig
    arch: Architecture
    part: str
    placement: Any
    steps_per_epoch: int
    spill: Any
    epoch: int = 0
    position: int = 0
    steps: int = 0
    loss_sum: float = 0.0
    correct_sum: float = 0.0
    curves: tuple[dict, ...] = ()

    @property
    def val_history(self) -> list[float]:
        return [row["val_acc"] for row in self.curves]


@dataclasses.dataclass(frozen=True)
class Schedule:
    """The host state of a cohort between rounds.

    Attributes:
      slots: a :class:`Slot` or None (idle) per slot, ``n`` of them.
      pending: member ids waiting for a slot, in order.
      knobs: the slots' :class:`nwsjax.step.Knobs`, numpy arrays ``[n]``.
      plans: int32 ``[n, max_steps, B]``: each slot's current epoch's batches.
      ranges: int32 ``[n, 4]``: validation and test ``(start, count)`` of each slot's dataset.
    """

    slots: tuple[Slot | None, ...]
    pending: tuple[int, ...]
    knobs: step.Knobs
    plans: np.ndarray
    ranges: np.ndarray


class RoundInputs(NamedTuple):
    """The per-slot arguments of one training round (see :func:`nwsjax.step.train_round`)."""

    plans: np.ndarray
    offsets: np.ndarray
    positions: np.ndarray
    steps: np.ndarray
    n_steps: np.int32
    active: np.ndarray


class Events(NamedTuple):
    """What a round produced, per slot: bool ``[n]`` each."""

    ended: np.ndarray  # the member finished an epoch
    diverged: np.ndarray  # a step of the member's was not finite; it stopped there


def busy(schedule: Schedule) -> bool:
    return any(s is not None for s in schedule.slots)


def epoch_plan(slot: Slot, max_steps: int, batch_size: int) -> np.ndarray:
    """int32 ``[max_steps, B]``: the member's batches of its current epoch (rows past its epoch unused)."""
    order = step.epoch_order(slot.config.seed, slot.epoch, slot.placement.train[1], slot.config.batch_size)
    plan = np.zeros((max_steps, batch_size), np.int32)
    plan[: len(order)] = order
    return plan


def round_inputs(schedule: Schedule) -> RoundInputs:
    """The next round: every active slot trains until the nearest epoch end."""
    slots = schedule.slots
    active = [s for s in slots if s is not None]
    return RoundInputs(
        schedule.plans,
        np.array([s.placement.train[0] if s else 0 for s in slots], np.int32),
        np.array([s.position if s else 0 for s in slots], np.int32),
        np.array([s.steps if s else 0 for s in slots], np.int32),
        np.int32(min(s.steps_per_epoch - s.position for s in active)),
        np.array([s is not None for s in slots]),
    )


def absorb(schedule: Schedule, out: step.RoundOutput) -> tuple[Schedule, Events]:
    """A round's outputs (host arrays ``[n]``) counted into the slots."""
    slots = list(schedule.slots)
    ended = np.zeros(len(slots), bool)
    diverged = np.zeros(len(slots), bool)
    for i, slot in enumerate(slots):
        if slot is None:
            continue
        done = int(out.steps_done[i])
        slots[i] = slot = dataclasses.replace(
            slot, position=slot.position + done, steps=slot.steps + done,
            loss_sum=slot.loss_sum + float(out.loss_sum[i]), correct_sum=slot.correct_sum + float(out.correct_sum[i]),
        )
        if not bool(out.healthy[i]):
            diverged[i] = True
        elif slot.position == slot.steps_per_epoch:
            ended[i] = True
    return dataclasses.replace(schedule, slots=tuple(slots)), Events(ended, diverged)


def close_epoch(slot: Slot, correct) -> Slot:
    """The slot after its epoch ended: one curve row more, this epoch's sums reset.

    ``correct``: correctly classified (validation, test) images after the epoch.
    """
    n_val, n_test = slot.placement.val[1], slot.placement.test[1]
    steps = slot.steps_per_epoch
    row = {
        "member": slot.member,
        "epoch": slot.epoch + 1,
        "steps": slot.steps,
        "lrate": optim.epoch_lrate(slot.config.lrate, slot.epoch),
        "train_loss": slot.loss_sum / steps,
        "train_acc": slot.correct_sum / (steps * slot.config.batch_size),
        "val_acc": float(correct[0]) / max(n_val, 1),
        "test_acc": float(correct[1]) / max(n_test, 1),
    }
    return dataclasses.replace(slot, epoch=slot.epoch + 1, position=0, loss_sum=0.0, correct_sum=0.0,
                               curves=(*slot.curves, row))


def _set_row(array: np.ndarray, index: int, value) -> np.ndarray:
    array = array.copy()
    array[index] = value
    return array


def _set_knobs(knobs: step.Knobs, index: int, new: step.Knobs) -> step.Knobs:
    return jax.tree.map(lambda stacked, value: _set_row(stacked, index, value), knobs, new)


def next_epoch(schedule: Schedule, index: int, slot: Slot) -> Schedule:
    """Slot ``index`` goes on with ``slot``'s next epoch: its batches and decayed learning rate."""
    max_steps, batch_size = schedule.plans.shape[1:]
    knobs = schedule.knobs._replace(
        lrate=_set_row(schedule.knobs.lrate, index, optim.epoch_lrate(slot.config.lrate, slot.epoch)))
    slots = list(schedule.slots)
    slots[index] = slot
    return dataclasses.replace(schedule, slots=tuple(slots), knobs=knobs,
                               plans=_set_row(schedule.plans, index, epoch_plan(slot, max_steps, batch_size)))


def vacate(schedule: Schedule, index: int) -> Schedule:
    """Slot ``index`` emptied (its member finished or diverged)."""
    slots = list(schedule.slots)
    slots[index] = None
    return dataclasses.replace(schedule, slots=tuple(slots))


def seat(schedule: Schedule, index: int, slot: Slot, knobs: step.Knobs) -> Schedule:
    """A new member (``slot``, its ``knobs``) in slot ``index``, taken from the front of the pending ones."""
    assert schedule.pending and schedule.pending[0] == slot.member
    max_steps, batch_size = schedule.plans.shape[1:]
    slots = list(schedule.slots)
    slots[index] = slot
    return dataclasses.replace(
        schedule, slots=tuple(slots), pending=schedule.pending[1:], knobs=_set_knobs(schedule.knobs, index, knobs),
        plans=_set_row(schedule.plans, index, epoch_plan(slot, max_steps, batch_size)),
        ranges=_set_row(schedule.ranges, index, [*slot.placement.val, *slot.placement.test]),
    )


def compact(schedule: Schedule, width: int) -> tuple[Schedule, np.ndarray]:
    """The busy slots first, then idle ones up to ``width`` slots; returns the rows taken."""
    busy_rows = [i for i, s in enumerate(schedule.slots) if s is not None]
    idle = [i for i, s in enumerate(schedule.slots) if s is None][: width - len(busy_rows)]
    rows = np.array(busy_rows + idle)
    take = lambda x: x[rows]  # noqa: E731
    return dataclasses.replace(
        schedule, slots=tuple(schedule.slots[i] for i in rows), knobs=jax.tree.map(take, schedule.knobs),
        plans=schedule.plans[rows], ranges=schedule.ranges[rows],
    ), rows
