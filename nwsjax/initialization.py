"""Initial weights that do not depend on the program a member trains in.

A member may train alone at its own architecture, or padded inside a larger one
(:mod:`nwsjax.padding`). Its initial weights must be the same either way, so every
kernel follows one convention:

1. draw unit-scale random numbers at the kernel's *family shape*: its shape in the
   largest network of the NWS space (filter size 7, conv width 12, dense width 192),
   from a key of its own (the member's initialization key folded with the layer's
   *role*, its place in the family, not its name in a program);
2. cut the kernel out of that draw: the centre taps, the first input and output
   channels (dense: the first units; the first dense layer's kernel is drawn as
   ``[16, channels, units]``, the flattened 4x4 map with channels innermost, so a
   narrower conv block keeps its rows);
3. scale it from the member's true fan-in and fan-out (Glorot), then zero what is
   padding (the ``mask``).

A program at the member's own shape cuts exactly the member's kernel; a padded
program cuts a larger block whose extra entries the mask zeroes. Both see the same
numbers in the member's entries. Biases start at zero, batch-norm scales at one
(zero on padding), offsets at zero.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from nwsjax.space import PROPERTIES

__all__ = ["FAMILY_FILTER", "FAMILY_WIDTH_CONV", "FAMILY_WIDTH_FC", "conv_role", "fc_role", "OUT_ROLE", "kernel"]

FAMILY_FILTER = max(PROPERTIES["filter_size"].options)  # 7
FAMILY_WIDTH_CONV = max(PROPERTIES["width_conv"].options)  # 12
FAMILY_WIDTH_FC = max(PROPERTIES["width_fc"].options)  # 192
OUT_ROLE = 16
_TRUNCATED_NORMAL_STD = 0.87962566103423978  # std of a unit normal truncated to [-2, 2]


def conv_role(block: int, index: int) -> int:
    """Role of the conv layer ``index`` (0 or 1) of ``block`` (0, 1 or 2)."""
    return 2 * block + index


def fc_role(layer: int) -> int:
    """Role of hidden dense layer ``layer``."""
    return 8 + layer


def _draw(key, shape, initialization: int) -> jax.Array:
    """Unit-scale numbers of ``initialization`` (index into ``PROPERTIES['initialization']``)."""
    if initialization == 0:  # constant
        return jnp.ones(shape, jnp.float32)
    if initialization == 1:  # normal
        return jax.random.normal(key, shape, jnp.float32)
    if initialization == 2:  # glorot_uniform
        return jax.random.uniform(key, shape, jnp.float32, -1.0)
    return jax.random.truncated_normal(key, -2.0, 2.0, shape, jnp.float32)  # glorot_normal


def _scale(initialization: int, fan_in, fan_out):
    """Multiplier of the unit draw, in float32 arithmetic whether the fans are ints or traced.

    Computing it the same way for static and traced fans keeps a member's initial
    weights bitwise equal in its own program and in a padded one.
    """
    if initialization == 0:
        return jnp.float32(0.1)
    if initialization == 1:
        return jnp.float32(1.0)
    fan_avg = (jnp.asarray(fan_in, jnp.float32) + jnp.asarray(fan_out, jnp.float32)) / jnp.float32(2.0)
    if initialization == 2:
        return jnp.sqrt(jnp.float32(3.0) / fan_avg)
    return jnp.sqrt(jnp.float32(1.0) / fan_avg) / jnp.float32(_TRUNCATED_NORMAL_STD)


def kernel(
    key: jax.Array,
    initialization,
    family_shape: tuple[int, ...],
    cut: Callable[[jax.Array], jax.Array],
    fan_in,
    fan_out,
    mask: jax.Array | None = None,
) -> jax.Array:
    """One kernel of a program: drawn at ``family_shape``, ``cut`` to the program's shape, scaled, masked.

    Args:
      key: this kernel's key (member key folded with its role).
      initialization: a Python int, or a traced int32 scalar (all four are then
        computed under ``lax.switch``).
      family_shape: the shape drawn, e.g. ``(7, 7, 12, 12)``.
      cut: the family draw -> the program's kernel (static slicing and reshaping).
      fan_in, fan_out: the member's true fans (ints, or traced int32 in a padded program).
      mask: float32 of the program's kernel shape, 1 on the member's weights, or None.
    """

    def one(index: int) -> jax.Array:
        value = cut(_draw(key, family_shape, index)) * _scale(index, fan_in, fan_out)
        return value if mask is None else value * mask

    if isinstance(initialization, (int, np.integer)):
        return one(int(initialization))
    return jax.lax.switch(initialization, [lambda i=i: one(i) for i in range(4)])
