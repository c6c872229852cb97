"""The NWS flattening order of a network's weights: one flat vector per member.

See the reference, "Flattening order". :func:`layout` lists every parameter array's
place in the vector; :func:`flatten` / :func:`unflatten` convert between the params
tree of :class:`nwsjax.model.NWSNet` and the vector.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nwsjax.model import Architecture

__all__ = ["Segment", "count_weights", "flatten", "layout", "unflatten"]


@dataclasses.dataclass(frozen=True)
class Segment:
    """One parameter array's place in the flattened NWS vector.

    Attributes:
      path: keys into the params tree, e.g. ``("conv0", "kernel")``.
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


def _param_shapes(arch: Architecture) -> list[tuple[tuple[str, ...], tuple[int, ...], str]]:
    """Parameter paths and shapes in build order (kernel, bias, then batch norm)."""
    shapes = []
    channels_in, layer, size = 3, 0, 32
    for block in arch.conv_channels:
        for channels in block:
            k = arch.filter_size
            shapes += [((f"conv{layer}", "kernel"), (k, k, channels_in, channels), "conv")]
            shapes += [((f"conv{layer}", "bias"), (channels,), "conv")]
            if arch.batch_norm:
                shapes += [((f"conv{layer}_bn", n), (channels,), "conv") for n in ("scale", "bias")]
            channels_in, layer = channels, layer + 1
        size //= 2
    features = size * size * channels_in
    for i, width in enumerate(arch.fc_widths):
        shapes += [((f"fc{i}", "kernel"), (features, width), "fc")]
        shapes += [((f"fc{i}", "bias"), (width,), "fc")]
        if arch.batch_norm:
            shapes += [((f"fc{i}_bn", n), (width,), "fc") for n in ("scale", "bias")]
        features = width
    shapes += [(("out", "kernel"), (features, arch.num_classes), "fc")]
    shapes += [(("out", "bias"), (arch.num_classes,), "fc")]
    return shapes


def layout(arch: Architecture) -> list[Segment]:
    """The NWS flattening order of ``arch``'s trainable parameters.

    Layers in build order; inside a layer the kernel, the bias, then the batch-norm
    scale and offset. Kernels are grouped by output unit (for each output channel,
    each input channel, the k x k taps row by row; for a dense layer each output
    unit's incoming weights), so the weights feeding one unit are contiguous.
    The conv part comes first.
    """
    segments, offset = [], 0
    for path, shape, part in _param_shapes(arch):
        segments.append(Segment(path, shape, offset, part))
        offset += int(np.prod(shape))
    return segments


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


def flatten(params: Mapping[str, Any], arch: Architecture):
    """Params tree -> flat NWS vector.

    Args:
      params: a params tree of ``arch``; leaves may carry leading axes (e.g.
        ``[members, ...]``), which are kept.

    Returns:
      ``[..., n_weights]`` with the same array type (numpy or jax) as the leaves.
    """
    pieces = []
    for segment in layout(arch):
        leaf = params[segment.path[0]][segment.path[1]]
        pieces.append(_to_unit_major(leaf, len(segment.shape)))
    xp = jnp if isinstance(pieces[0], jax.Array) else np
    return xp.concatenate(pieces, axis=-1)


def unflatten(vector, arch: Architecture) -> dict[str, dict[str, Any]]:
    """Flat NWS vector ``[..., n_weights]`` -> params tree (inverse of :func:`flatten`)."""
    xp = jnp if isinstance(vector, jax.Array) else np
    lead = vector.shape[:-1]
    params: dict[str, dict[str, Any]] = {}
    for segment in layout(arch):
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
        params.setdefault(segment.path[0], {})[segment.path[1]] = piece
    return params


def count_weights(arch: Architecture) -> dict[str, int]:
    """``{"conv": n, "fc": n, "total": n}`` weights in the flat vector."""
    counts = {"conv": 0, "fc": 0}
    for segment in layout(arch):
        counts[segment.part] += segment.size
    counts["total"] = counts["conv"] + counts["fc"]
    return counts
