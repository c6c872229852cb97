"""Execution strategies: how a per-member function runs over a cohort's member axis.

A strategy never changes what a member computes, only how the members' work is laid
out for the compiler:

* ``vmap``: one batched program (convolutions become grouped convolutions, or
  batched matrix products with ``conv="im2col"``);
* ``map``: ``lax.map``, members one after another inside one compiled program
  (each member's convolutions stay plain; finished members are skipped);
* ``chunked``: ``lax.map`` over chunks of ``chunk`` members, ``vmap`` inside.

On the 2-core CPU a vmapped ``lax.conv`` runs about 10x slower per member than a
loop of single-model steps (``shared/docs/performance-notes.md``), so the CPU
default is ``map``, with :func:`nwsjax.model.conv_canonical` convolutions (whose
backward passes stay fast inside the loop: 30 ms per member-step against 80 for
im2col, BENCHMARKS.md); accelerators default to ``vmap`` with im2col convolutions
(not yet measured on one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax

from nwsjax.errors import ConfigError

__all__ = ["Strategy", "default_strategy", "parse_strategy", "map_members"]

BATCHINGS = ("vmap", "map", "chunked")
CONVS = ("xla", "im2col", "canonical")


@dataclasses.dataclass(frozen=True)
class Strategy:
    """How a cohort step is laid out.

    Attributes:
      batching: ``"vmap"``, ``"map"`` or ``"chunked"``.
      conv: ``"xla"`` (``lax.conv``), ``"im2col"`` (shifted slices + matmul) or
        ``"canonical"`` (``lax.conv`` with backward passes in XLA:CPU's fast layout,
        :func:`nwsjax.model.conv_canonical`).
      chunk: members per vmapped chunk for ``"chunked"``.
    """

    batching: str = "map"
    conv: str = "xla"
    chunk: int = 8

    def __post_init__(self):
        if self.batching not in BATCHINGS:
            raise ConfigError(f"strategy batching {self.batching!r}: choose one of {BATCHINGS}")
        if self.conv not in CONVS:
            raise ConfigError(f"strategy conv {self.conv!r}: choose one of {CONVS}")
        if self.chunk < 1:
            raise ConfigError(f"strategy chunk {self.chunk}: must be >= 1")

    @property
    def name(self) -> str:
        chunk = f"{self.chunk}" if self.batching == "chunked" else ""
        return f"{self.batching}{chunk}+{self.conv}"


def default_strategy(backend: str | None = None) -> Strategy:
    """The strategy chosen for ``backend`` (default: JAX's default backend)."""
    backend = backend or jax.default_backend()
    return Strategy("map", "canonical") if backend == "cpu" else Strategy("vmap", "im2col")


def parse_strategy(text: str) -> Strategy:
    """``"auto"``, ``"vmap"``, ``"map"``, ``"chunked8"``, optionally ``+xla`` / ``+im2col``."""
    if text == "auto":
        return default_strategy()
    batching, _, conv = text.partition("+")
    chunk = 8
    if batching.startswith("chunked") and batching[7:].isdigit():
        batching, chunk = "chunked", int(batching[7:])
    if batching not in BATCHINGS:
        raise ConfigError(
            f"--strategy {text}: unknown; use auto, vmap, map or chunkedN, optionally +xla, +im2col or +canonical"
        )
    return Strategy(batching, conv or "xla", chunk)


def map_members(strategy: Strategy, fn: Callable, members: Sequence, shared: Sequence = ()):
    """Applies ``fn(*member_args, *shared)`` to every member.

    Args:
      members: pytrees whose leaves have a leading member axis ``[M, ...]``.
      shared: arguments given unchanged to every member (e.g. the dataset).

    Returns:
      ``fn``'s outputs stacked along a leading member axis.
    """
    one = lambda args: fn(*args, *shared)  # noqa: E731
    if strategy.batching == "vmap":
        return jax.vmap(lambda *args: one(args))(*members)
    if strategy.batching == "map":
        return jax.lax.map(one, tuple(members))
    return jax.lax.map(one, tuple(members), batch_size=strategy.chunk)
