"""Which members train in which compiled program: exact shapes, padded, or a cost model's choice.

Members that differ in batch size, batch norm or class count never share a program
(padding those would change what a member computes). Within such a *key*, members
of different architectures can share one padded program (:mod:`nwsjax.padding`):
one compile instead of one per architecture, at the price of computing the padding.

The policies (``--pad-architectures``):

* ``none``: one program per architecture (exact shapes, nothing wasted);
* ``all``: one program per key, at the largest architecture of its members;
* ``auto``: a cost model merges architectures while the compile time saved exceeds
  the compute added. Estimated time of a program =
  ``compile_seconds + sum(member steps) * train FLOPs per step of its architecture /
  (flops_per_second * devices)``; starting from exact shapes, the pair of programs
  whose merge saves the most is merged until no merge saves time.

On CPU a program compiles in about 20 s and trains at about 30 GFLOP/s per core
(BENCHMARKS.md), so ``auto`` pads where members train briefly and keeps exact shapes
for long runs of few architectures. On an accelerator compiles cost tens of seconds
while the small convolutions of this family are nearly free (teraflops, and ``vmap``
computes a program's members together), so ``auto`` there comes out as ``all``
unless runs are very long.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import numpy as np

from nwsjax.errors import ConfigError
from nwsjax.model import _BLOCK_DEPTHS, Architecture
from nwsjax.padding import program_architecture
from nwsjax.space import MemberConfig

__all__ = ["POLICIES", "CostModel", "Program", "plan_programs", "train_flops", "part_label"]

POLICIES = ("auto", "all", "none")


@dataclasses.dataclass(frozen=True)
class CostModel:
    """What a program costs on a backend.

    Attributes:
      compile_seconds: compiling one program (its initialization, training and evaluation).
      flops_per_second: training throughput of one device, in FLOPs of the model's
        convolutions and dense layers (forward and backward).
    """

    compile_seconds: float
    flops_per_second: float

    @classmethod
    def for_backend(cls, backend: str) -> CostModel:
        """Measured on this project's CPU (BENCHMARKS.md); an estimate for accelerators."""
        if backend == "cpu":
            return cls(compile_seconds=20.0, flops_per_second=30e9)
        return cls(compile_seconds=40.0, flops_per_second=20e12)


@dataclasses.dataclass(frozen=True)
class Program:
    """One compiled program and the members it trains.

    Attributes:
      label: its name in reports: a part label for exact shapes, ``pad-...`` when padded.
      arch: the architecture it computes.
      padded: True when its members have other architectures than ``arch`` (they then
        carry their own shapes, :class:`nwsjax.model.MemberShape`).
      members: member ids, in population order.
    """

    label: str
    arch: Architecture
    padded: bool
    members: tuple[int, ...]


def part_label(member: MemberConfig, num_classes: int) -> str:
    """The zoo part a member is stored in, by its own architecture: e.g. ``f5-c3-d2-w8-u128-b64`` (``-k20``...)."""
    classes = "" if num_classes == 10 else f"-k{num_classes}"
    return f"{Architecture.of(member, num_classes).label()}-b{member.batch_size}{classes}"


def forward_flops(dims: np.ndarray, num_classes: int) -> np.ndarray:
    """FLOPs of one image's forward pass (multiply-adds x 2) of architectures ``dims``.

    Args:
      dims: int ``[..., 5]``: filter size, conv depth, dense depth, conv width, dense width.
    """
    k, depth_fc, width, units = (dims[..., i].astype(np.float64) for i in (0, 2, 3, 4))
    table = np.array([(1, 1, 1)] * 3 + [_BLOCK_DEPTHS[d] for d in (3, 4, 5)], np.float64)
    per_block = table[dims[..., 1]]  # conv layers per block, by conv depth
    flops = np.zeros(k.shape)
    for block in range(3):
        pixels = (32 >> block) ** 2
        cout = width * 2**block
        cin = 3.0 if block == 0 else width * 2 ** (block - 1)
        flops += pixels * k * k * cout * (cin + (per_block[..., block] - 1) * cout)
    dense = 16 * 4 * width * units
    for i in range(1, 4):
        dense += np.where(depth_fc > i, (units / 2 ** (i - 1)) * (units / 2**i), 0.0)
    dense += units / 2 ** (depth_fc - 1) * num_classes
    return 2.0 * (flops + dense)


def train_flops(arch: Architecture, batch_size: int) -> float:
    """FLOPs of one training step (forward and backward, about 3x forward) of ``arch``."""
    dims = np.array([arch.filter_size, arch.depth_conv, arch.depth_fc, arch.width_conv, arch.width_fc])
    return float(3.0 * batch_size * forward_flops(dims, arch.num_classes))


def _dims(arch: Architecture) -> tuple[int, ...]:
    return (arch.filter_size, arch.depth_conv, arch.depth_fc, arch.width_conv, arch.width_fc)


def _merge_greedily(dims: np.ndarray, steps: np.ndarray, per_step: float, num_classes: int,
                    compile_seconds: float) -> list[list[int]]:
    """Groups of architecture indices, merged while a merge saves estimated time.

    Args:
      dims: int [n, 5], distinct architectures; steps: [n], their members' steps in total.
      per_step: seconds per training FLOP (batch size included).
    """
    groups = [[i] for i in range(len(dims))]
    shapes = dims.copy()
    work = steps.astype(np.float64)

    def seconds(shape, total_steps):
        return total_steps * forward_flops(shape, num_classes) * per_step

    while len(groups) > 1:
        merged = np.maximum(shapes[:, None], shapes[None, :])
        alone = seconds(shapes, work)
        saving = compile_seconds + alone[:, None] + alone[None, :] - seconds(merged, work[:, None] + work[None, :])
        np.fill_diagonal(saving, -np.inf)
        i, j = np.unravel_index(np.argmax(saving), saving.shape)
        if saving[i, j] <= 0:
            break
        i, j = min(i, j), max(i, j)
        groups[i] += groups.pop(j)
        shapes[i] = merged[i, j]
        work[i] += work[j]
        shapes, work = np.delete(shapes, j, 0), np.delete(work, j)
    return groups


def plan_programs(
    members: Sequence[MemberConfig],
    num_classes: Mapping[str, int],
    steps: Sequence[int],
    policy: str = "auto",
    *,
    cost: CostModel,
    devices: int = 1,
) -> list[Program]:
    """The programs that train ``members``, in the order they run (largest first).

    Args:
      num_classes: classes per dataset name.
      steps: each member's expected training steps (the cost model's weights).
      policy: ``"auto"``, ``"all"`` or ``"none"``.
      cost: the backend's :class:`CostModel`; devices: devices a program spreads over.
    """
    if policy not in POLICIES:
        raise ConfigError(f"pad_architectures={policy!r}: choose one of {', '.join(POLICIES)}")
    keys: dict[tuple, dict[Architecture, list[int]]] = {}
    for i, member in enumerate(members):
        arch = Architecture.of(member, num_classes[member.dataset])
        key = (member.batch_size, member.batch_norm, arch.num_classes)
        keys.setdefault(key, {}).setdefault(arch, []).append(i)
    programs = []
    for (batch_size, _, head), by_arch in keys.items():
        archs = list(by_arch)
        if policy == "none":
            groups = [[a] for a in range(len(archs))]
        elif policy == "all":
            groups = [list(range(len(archs)))]
        else:
            dims = np.array([_dims(a) for a in archs])
            work = np.array([sum(steps[i] for i in by_arch[a]) for a in archs])
            per_step = 3.0 * batch_size / (cost.flops_per_second * devices)
            groups = _merge_greedily(dims, work, per_step, head, cost.compile_seconds)
        for group in groups:
            ids = tuple(sorted(i for a in group for i in by_arch[archs[a]]))
            arch = program_architecture([archs[a] for a in group])
            first = members[ids[0]]
            label = part_label(first, num_classes[first.dataset])
            if len(group) > 1:
                label = "pad-" + label.replace(Architecture.of(first, num_classes[first.dataset]).label(), arch.label(), 1)
            programs.append(Program(label, arch, len(group) > 1, ids))
    return sorted(programs, key=lambda p: (-len(p.members), p.label))
