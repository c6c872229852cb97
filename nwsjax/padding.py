"""Members of different architectures in one program: the padded architecture, and weights moved in and out of it.

A *padded program* trains every member inside one architecture at least as large as
each of theirs (:func:`program_architecture`): kernels zero-padded to the largest
filter size (centred, so "same" convolutions give the same output), channels and
units padded to the widest, a member's missing conv layers skipped as identities, its
output layer reading its last hidden layer. The forward pass multiplies every kernel
and bias by the member's mask (:class:`nwsjax.model.MemberShape`), so gradients of
padding are exactly zero and padding stays zero under every optimizer.

The zoo stores members at their own architecture: :func:`crop` cuts a member's
weights (or batch-norm statistics) out of the program's tree; :func:`embed` is its
inverse, with zeros in the padding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nwsjax.model import _BLOCK_DEPTHS, Architecture

__all__ = ["program_architecture", "crop", "embed"]

_DIMS = ("filter_size", "depth_conv", "depth_fc", "width_conv", "width_fc")


def program_architecture(archs: Sequence[Architecture]) -> Architecture:
    """The smallest architecture every one of ``archs`` fits in (they share batch norm and classes)."""
    first = archs[0]
    if any((a.batch_norm, a.num_classes) != (first.batch_norm, first.num_classes) for a in archs):
        raise ValueError("a padded program holds members with one batch-norm setting and one class count")
    if any(a.filter_size % 2 == 0 for a in archs):
        raise ValueError("only odd filter sizes pad exactly (centred taps)")
    return Architecture(**{d: max(getattr(a, d) for a in archs) for d in _DIMS},
                        batch_norm=first.batch_norm, num_classes=first.num_classes)


def _layer_map(program: Architecture, member: Architecture) -> list[int]:
    """Program conv-layer index of each of the member's conv layers."""
    starts = np.cumsum((0, *_BLOCK_DEPTHS[program.depth_conv]))
    return [int(starts[b]) + j for b, depth in enumerate(_BLOCK_DEPTHS[member.depth_conv]) for j in range(depth)]


def _conv_out(arch: Architecture) -> list[int]:
    return [c for block in arch.conv_channels for c in block]


def _slices(program: Architecture, member: Architecture) -> dict[str, tuple[str, Any]]:
    """Member layer name -> (program layer name, how to cut its leaves).

    A cut is ``("conv", lo, k, c_in, c_out)``, ``("fc0", spatial, C_prog, C, U)``,
    ``("dense", n_in, n_out)`` or ``("out", n_in)``.
    """
    cuts = {}
    outs = _conv_out(member)
    lo = (program.filter_size - member.filter_size) // 2
    for m, p in enumerate(_layer_map(program, member)):
        cin = 3 if m == 0 else outs[m - 1]
        cuts[f"conv{m}"] = (f"conv{p}", ("conv", lo, member.filter_size, cin, outs[m]))
    channels_prog, channels = _conv_out(program)[-1], outs[-1]
    for i, width in enumerate(member.fc_widths):
        if i == 0:
            cut = ("fc0", 16, channels_prog, channels, width)
        else:
            cut = ("dense", member.fc_widths[i - 1], width)
        cuts[f"fc{i}"] = (f"fc{i}", cut)
    cuts["out"] = ("out", ("out", member.fc_widths[-1]))
    return cuts


def _cut(leaf, name: str, cut) -> Any:
    """The member's block of one leaf (leading axes kept)."""
    kind = cut[0]
    vector = name != "kernel"  # bias, batch-norm scale/bias/mean/var: one value per output unit
    if kind == "conv":
        _, lo, k, cin, cout = cut
        return leaf[..., :cout] if vector else leaf[..., lo : lo + k, lo : lo + k, :cin, :cout]
    if kind == "fc0":
        _, spatial, channels_prog, channels, units = cut
        if vector:
            return leaf[..., :units]
        lead = leaf.shape[:-2]
        blocks = leaf.reshape(*lead, spatial, channels_prog, leaf.shape[-1])[..., :channels, :units]
        return blocks.reshape(*lead, spatial * channels, units)
    if kind == "dense":
        _, n_in, n_out = cut
        return leaf[..., :n_out] if vector else leaf[..., :n_in, :n_out]
    return leaf if vector else leaf[..., : cut[1], :]


def crop(tree: Mapping[str, Mapping[str, Any]], program: Architecture, member: Architecture) -> dict:
    """A member's weights (or batch-norm statistics) cut out of a padded program's tree.

    Args:
      tree: ``{layer: {leaf: array}}`` of a padded program of ``program`` (params or
        batch_stats; leaves may carry leading axes).

    Returns:
      the same collection at ``member``'s own shapes and layer names, as a model of
      ``member`` trained alone holds it.
    """
    out = {}
    for name, (source, cut) in _slices(program, member).items():
        for suffix in ("", "_bn"):
            if source + suffix in tree:
                out[name + suffix] = {leaf: _cut(v, leaf, cut) for leaf, v in tree[source + suffix].items()}
    return out


def embed(tree: Mapping[str, Mapping[str, Any]], member: Architecture, program: Architecture,
          like: Mapping[str, Mapping[str, Any]]) -> dict:
    """The inverse of :func:`crop`: ``like`` (a program tree) with the member's block replaced by ``tree`` and zeros elsewhere."""
    out = {layer: {leaf: np.zeros_like(v) for leaf, v in leaves.items()} for layer, leaves in like.items()}
    for name, (source, cut) in _slices(program, member).items():
        for suffix in ("", "_bn"):
            if name + suffix not in tree:
                continue
            for leaf, value in tree[name + suffix].items():
                target = out[source + suffix][leaf]
                index = np.arange(target.size).reshape(target.shape)
                np.put(target, _cut(index, leaf, cut), np.asarray(value))
    return out
