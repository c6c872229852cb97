"""The NWS flattening order of a network's weights: one flat vector per member.

The released NWS vectors hold every variable of the graph (reference, "Flattening
order"): layer by layer, the kernel (grouped by output unit), the bias, then the
batch-norm beta, gamma, moving mean and moving variance. :func:`layout` lists every
array's place in the vector; :func:`flatten` / :func:`unflatten` convert between the
``params`` and ``batch_stats`` trees of :class:`nwsjax.model.NWSNet` and the vector.

A vector may also come without the moving statistics (``moving_stats=False``: the
trainable parameters only, as nwsjax wrote before). The output layer's width is the
architecture's ``num_classes`` (20 in the reference, :func:`nwsjax.model.Architecture.of`).
For the fixed architecture (filter 5, conv depth 3, FC depth 2, widths 8 and 128,
batch norm) the lengths are 92,868 (released: moving statistics, 20 outputs),
92,372 (no statistics, 20 outputs), 92,218 and 91,722 (10 outputs, with and without).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nwsjax.model import Architecture

__all__ = ["MOVING_STATS", "Segment", "count_weights", "flatten", "layout", "moving_stats_of", "unflatten"]

MOVING_STATS = ("mean", "var")  # Flax's names of the moving statistics in ``batch_stats``


@dataclasses.dataclass(frozen=True)
class Segment:
    """One parameter array's place in the flattened NWS vector.

    Attributes:
      path: keys into the params tree, e.g. ``("conv0", "kernel")``, or into the
        batch_stats tree for a moving statistic (``("conv0_bn", "mean")``).
      shape: the array's shape in the params tree (Flax layout).
      offset: first index in the flat vector.
      part: ``"conv"`` or ``"fc"``.
    """

    path: tuple[str, ...]
    shape: tuple[int, ...]
    offset: int
    part: str

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def layer(self) -> str:
        return self.path[0].removesuffix("_bn")

    @property
    def collection(self) -> str:
        """``"batch_stats"`` for a moving statistic, else ``"params"``."""
        return "batch_stats" if self.path[-1] in MOVING_STATS else "params"


def _param_shapes(arch: Architecture, moving_stats: bool) -> list[tuple]:
    """``(path, shape, part)`` of every array in build order (kernel, bias, then batch norm)."""
    norm = ("bias", "scale", *MOVING_STATS) if moving_stats else ("bias", "scale")  # beta, gamma, mean, var
    shapes = []
    channels_in, layer, size = 3, 0, 32
    for block in arch.conv_channels:
        for channels in block:
            k = arch.filter_size
            shapes += [((f"conv{layer}", "kernel"), (k, k, channels_in, channels), "conv")]
            shapes += [((f"conv{layer}", "bias"), (channels,), "conv")]
            if arch.batch_norm:
                shapes += [((f"conv{layer}_bn", n), (channels,), "conv") for n in norm]
            channels_in, layer = channels, layer + 1
        size //= 2
    features = size * size * channels_in
    for i, width in enumerate(arch.fc_widths):
        shapes += [((f"fc{i}", "kernel"), (features, width), "fc")]
        shapes += [((f"fc{i}", "bias"), (width,), "fc")]
        if arch.batch_norm:
            shapes += [((f"fc{i}_bn", n), (width,), "fc") for n in norm]
        features = width
    shapes += [(("out", "kernel"), (features, arch.num_classes), "fc")]
    shapes += [(("out", "bias"), (arch.num_classes,), "fc")]
    return shapes


def layout(arch: Architecture, moving_stats: bool = True) -> list[Segment]:
    """The NWS flattening order of ``arch``'s arrays.

    Layers in build order; inside a layer the kernel, the bias, then the batch-norm
    offset (beta) and scale (gamma) and, with ``moving_stats`` (the released layout),
    the moving mean and variance. Kernels are grouped by output unit (for each output
    channel, each input channel, the k x k taps row by row; for a dense layer each
    output unit's incoming weights), so the weights feeding one unit are contiguous.
    The conv part comes first.
    """
    segments, offset = [], 0
    for path, shape, part in _param_shapes(arch, moving_stats):
        segments.append(Segment(path, shape, offset, part))
        offset += int(np.prod(shape))
    return segments


def moving_stats_of(arch: Architecture, n_weights: int) -> bool:
    """Whether a flat vector of ``arch`` with ``n_weights`` values holds the moving statistics.

    False for an architecture without batch norm (it has none). Raises ValueError when
    ``n_weights`` is neither length of ``arch``.
    """
    lengths = {flag: count_weights(arch, flag)["total"] for flag in (False, True)}
    if n_weights not in lengths.values():
        raise ValueError(
            f"a vector of {n_weights} values is not one of {arch.label()} with {arch.num_classes} outputs "
            f"({lengths[True]} with moving statistics, {lengths[False]} without)"
        )
    return arch.batch_norm and n_weights == lengths[True]


def _to_unit_major(array, ndim: int):
    """Flax kernel layout ([k, k, in, out] or [in, out]) -> output unit first, then ravel."""
    xp = jnp if isinstance(array, jax.Array) else np
    lead = array.shape[: array.ndim - ndim]
    if ndim == 4:  # [..., k, k, in, out] -> [..., out, in, k, k]
        axes = (*range(len(lead)), len(lead) + 3, len(lead) + 2, len(lead), len(lead) + 1)
    elif ndim == 2:  # [..., in, out] -> [..., out, in]
        axes = (*range(len(lead)), len(lead) + 1, len(lead))
    else:
        return array.reshape(*lead, -1)
    return xp.transpose(array, axes).reshape(*lead, -1)


def flatten(params: Mapping[str, Any], arch: Architecture, batch_stats: Mapping[str, Any] | None):
    """Params and batch-norm statistics -> flat NWS vector.

    Args:
      params: a params tree of ``arch``; leaves may carry leading axes (e.g.
        ``[members, ...]``), which are kept.
      batch_stats: its batch_stats tree (same leading axes): the moving statistics go
        into the vector (the released layout); None leaves them out
        (``layout(arch, moving_stats=False)``). Ignored without batch norm.

    Returns:
      ``[..., n_weights]`` with the same array type (numpy or jax) as the leaves.
    """
    trees = {"params": params, "batch_stats": batch_stats}
    pieces = []
    for segment in layout(arch, moving_stats=batch_stats is not None):
        leaf = trees[segment.collection][segment.path[0]][segment.path[1]]
        pieces.append(_to_unit_major(leaf, len(segment.shape)))
    xp = jnp if isinstance(pieces[0], jax.Array) else np
    return xp.concatenate(pieces, axis=-1)


def unflatten(vector, arch: Architecture) -> tuple[dict[str, dict], dict[str, dict] | None]:
    """Flat NWS vector ``[..., n_weights]`` -> ``(params, batch_stats)`` (inverse of :func:`flatten`).

    Whether the vector holds the moving statistics is read from its length
    (:func:`moving_stats_of`); ``batch_stats`` is None when it does not, ``{}`` for an
    architecture without batch norm. Raises ValueError for a length of neither variant.
    """
    xp = jnp if isinstance(vector, jax.Array) else np
    lead = vector.shape[:-1]
    moving_stats = moving_stats_of(arch, vector.shape[-1])
    trees: dict[str, dict[str, dict[str, Any]]] = {"params": {}, "batch_stats": {}}
    for segment in layout(arch, moving_stats):
        piece = vector[..., segment.offset : segment.offset + segment.size]
        shape = segment.shape
        if len(shape) == 4:
            k, _, cin, cout = shape
            piece = piece.reshape(*lead, cout, cin, k, k)
            n = len(lead)
            piece = xp.transpose(piece, (*range(n), n + 2, n + 3, n + 1, n))
        elif len(shape) == 2:
            cin, cout = shape
            piece = piece.reshape(*lead, cout, cin)
            piece = xp.swapaxes(piece, -1, -2)
        else:
            piece = piece.reshape(*lead, *shape)
        trees[segment.collection].setdefault(segment.path[0], {})[segment.path[1]] = piece
    batch_stats = trees["batch_stats"] if moving_stats or not arch.batch_norm else None
    return trees["params"], batch_stats


def count_weights(arch: Architecture, moving_stats: bool = True) -> dict[str, int]:
    """``{"conv": n, "fc": n, "total": n}`` values in the flat vector (see :func:`layout`)."""
    counts = {"conv": 0, "fc": 0}
    for segment in layout(arch, moving_stats):
        counts[segment.part] += segment.size
    counts["total"] = counts["conv"] + counts["fc"]
    return counts
