"""The compiled programs of one cohort: initialize (or refill), train a round, evaluate.

A cohort is the members of one :class:`nwsjax.programs.Program` trained in ``n``
*slots* at once: per-member state stacked on a leading ``[n]`` axis, the per-member
step functions of :mod:`nwsjax.step` laid out over it by the execution strategy
(:func:`nwsjax.strategy.map_members`) and, with several devices, split over a
``("pop",)`` mesh. The host-side schedule that drives these programs is
:mod:`nwsjax.schedule`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nwsjax import step
from nwsjax.model import NWSNet
from nwsjax.strategy import Strategy, map_members

__all__ = ["CohortShape", "CohortPrograms", "eval_plan", "default_memory_budget"]


@dataclasses.dataclass(frozen=True)
class CohortShape:
    """Everything static about a cohort's programs.

    Attributes:
      model: the (possibly padded) network.
      static: knobs every member shares, compiled in (``population.shared_knobs``).
      batch_size: B; max_steps: the longest epoch of its datasets, in steps.
      eval_plans: ``(chunk, n_chunks)`` of the validation and the test splits (:func:`eval_plan`).
      devices: devices the slots are split over.
    """

    model: NWSNet
    static: dict
    batch_size: int
    max_steps: int
    eval_plans: tuple[tuple[int, int], tuple[int, int]]
    devices: int


class CohortPrograms:
    """Compiles and runs one cohort's three programs over ``n`` slots.

    ``init(knobs, states, refill)`` gives fresh members in the slots where ``refill``
    is set and keeps the others; ``train(states, knobs, plans, offsets, positions,
    steps, n_steps, active)`` runs one round (:func:`nwsjax.step.train_round` per
    slot); ``evaluate(states, knobs, ranges, active)`` counts correct validation and
    test images, float32 ``[n, 2]``.
    """

    def __init__(self, shape: CohortShape, strategy: Strategy, data: step.DeviceData):
        self.shape = shape
        self.compile_seconds = 0.0
        self.footprint = 0  # bytes, the largest program at the widest width compiled
        model, static = shape.model, shape.static
        val_plan, test_plan = shape.eval_plans

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

        if shape.devices > 1:
            init, train, evaluate = (_sharded(f, shape.devices, shared) for f, shared in
                                     ((init, ()), (train, (6,)), (evaluate, ())))
        self._fresh, self._traced = fresh, (init, train, evaluate)

    def first_states(self, knobs: step.Knobs):
        """Compiles the init program for ``knobs``' width and returns every slot initialized.

        The first states come from the refill program itself (every slot refilled over
        zeros): one initialization program to compile per cohort, not two. It keeps
        XLA's default options: at backend optimization level 0 it compiles in a third
        of the time, but initial weights come out 1 ulp from the single-model
        reference's (which this program matches bitwise).
        """
        start = time.perf_counter()
        init = self._traced[0]
        zeros = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(self._fresh, knobs))
        everyone = np.ones(len(jax.tree.leaves(knobs)[0]), bool)
        self.init = jax.jit(init, donate_argnums=(1,)).lower(knobs, zeros, everyone).compile()
        self.compile_seconds += time.perf_counter() - start
        return self.init(knobs, zeros, everyone)

    def compile(self, states, knobs) -> None:
        """Compiles the train and evaluate programs at the width of ``states``."""
        start = time.perf_counter()
        _, train, evaluate = self._traced
        n = len(jax.tree.leaves(knobs)[0])
        example = (
            states,
            knobs,
            np.zeros((n, self.shape.max_steps, self.shape.batch_size), np.int32),
            np.zeros(n, np.int32),
            np.zeros(n, np.int32),
            np.zeros(n, np.int32),
            np.int32(1),
            np.ones(n, bool),
        )
        self.train = jax.jit(train, donate_argnums=(0,)).lower(*example).compile()
        self.evaluate = jax.jit(evaluate).lower(states, knobs, np.zeros((n, 4), np.int32), np.ones(n, bool)).compile()
        self.compile_seconds += time.perf_counter() - start
        self.footprint = max(self.footprint, _footprint(self.train), _footprint(self.evaluate))


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
