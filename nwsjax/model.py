"""The NWS CNN family as a Flax module, and the NWS flattening order of its weights.

Network (reference, "Architecture family"), input ``[batch, 32, 32, 3]``:

* three conv blocks; block ``c`` has ``width_conv * 2**c`` channels and holds 1, 1, 1
  (depth 3), 1, 1, 2 (depth 4) or 1, 2, 2 (depth 5) conv layers, then 2x2 max pooling;
  a conv layer is conv + bias (stride 1, "same"), batch norm, activation;
* ``depth_fc`` dense layers of width ``width_fc * 2**-i``: dense + bias, activation,
  batch norm, dropout 0.5;
* an output dense layer of ``num_classes`` logits.

Activation and initialization are call arguments, not module fields, so one compiled
program serves members that differ in them: pass a Python ``int`` (an index into
:data:`ACTIVATIONS` / :data:`INITIALIZATIONS`) for a single model, or a traced int32
scalar inside a population step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nwsjax.space import MemberConfig

__all__ = [
    "ACTIVATIONS",
    "INITIALIZATIONS",
    "Architecture",
    "NWSNet",
    "Segment",
    "layout",
    "flatten",
    "unflatten",
    "activate",
]

BATCH_NORM_MOMENTUM = 0.99  # TF1 tf.layers.batch_normalization defaults
BATCH_NORM_EPSILON = 1e-3
DROPOUT_RATE = 0.5

ACTIVATIONS: tuple[Callable[[jax.Array], jax.Array], ...] = (
    nn.relu,
    nn.elu,
    nn.sigmoid,
    jnp.tanh,
)

INITIALIZATIONS: tuple[Callable, ...] = (
    nn.initializers.constant(0.1),
    nn.initializers.normal(stddev=1.0),
    nn.initializers.glorot_uniform(),
    nn.initializers.glorot_normal(),
)

_BLOCK_DEPTHS = {3: (1, 1, 1), 4: (1, 1, 2), 5: (1, 2, 2)}


@dataclasses.dataclass(frozen=True)
class Architecture:
    """The static shape of one NWS network: everything that changes its parameter shapes."""

    filter_size: int = 5
    depth_conv: int = 3
    depth_fc: int = 2
    width_conv: int = 8
    width_fc: int = 128
    batch_norm: bool = True
    num_classes: int = 10

    @classmethod
    def of(cls, member: MemberConfig, num_classes: int) -> Architecture:
        """The architecture of ``member`` with an output layer of ``num_classes`` (its dataset's classes)."""
        return cls(
            member.filter_size,
            member.depth_conv,
            member.depth_fc,
            member.width_conv,
            member.width_fc,
            member.batch_norm == "on",
            num_classes,
        )

    @property
    def conv_channels(self) -> tuple[tuple[int, ...], ...]:
        """Output channels of each conv layer, grouped by block."""
        return tuple(
            (self.width_conv * 2**block,) * depth
            for block, depth in enumerate(_BLOCK_DEPTHS[self.depth_conv])
        )

    @property
    def fc_widths(self) -> tuple[int, ...]:
        return tuple(self.width_fc // 2**i for i in range(self.depth_fc))

    def label(self) -> str:
        """Short name, e.g. ``f5-c3-d2-w8-u128``."""
        bn = "" if self.batch_norm else "-nobn"
        return (
            f"f{self.filter_size}-c{self.depth_conv}-d{self.depth_fc}"
            f"-w{self.width_conv}-u{self.width_fc}{bn}"
        )


def activate(x: jax.Array, activation: int | jax.Array) -> jax.Array:
    """Applies activation number ``activation`` (see :data:`ACTIVATIONS`).

    A traced index selects among all four, computed elementwise: unlike ``lax.switch``
    this fuses into the surrounding layer (a conditional there doubles the step time
    on CPU). Each activation's gradient is finite everywhere, so the branches not
    selected contribute exact zeros.
    """
    if isinstance(activation, (int, np.integer)):
        return ACTIVATIONS[int(activation)](x)
    out = ACTIVATIONS[-1](x)
    for index in range(len(ACTIVATIONS) - 2, -1, -1):
        out = jnp.where(activation == index, ACTIVATIONS[index](x), out)
    return out


def _kernel_init(initialization: int | jax.Array) -> Callable:
    if isinstance(initialization, (int, np.integer)):
        return INITIALIZATIONS[int(initialization)]

    def init(key, shape, dtype=jnp.float32):
        branches = [lambda k, f=f: f(k, shape, dtype) for f in INITIALIZATIONS]
        return jax.lax.switch(initialization, branches, key)

    return init


def conv_xla(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """'Same' stride-1 convolution: ``[B, H, W, C] x [k, k, C, O] -> [B, H, W, O]``."""
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def conv_im2col(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The same convolution as a matrix product over shifted slices (im2col).

    Under ``jax.vmap`` this becomes a batched matrix product instead of a grouped
    convolution, which some backends run much faster.
    """
    k = kernel.shape[0]
    pad = (k - 1) // 2, k // 2
    height, width = x.shape[1], x.shape[2]
    padded = jnp.pad(x, ((0, 0), pad, pad, (0, 0)))
    patches = jnp.concatenate(
        [padded[:, dy : dy + height, dx : dx + width, :] for dy in range(k) for dx in range(k)],
        axis=-1,
    )  # [B, H, W, k*k*C], taps row by row, channels inside
    return jnp.einsum("bhwp,po->bhwo", patches, kernel.reshape(-1, kernel.shape[-1]))


def _same_padding(k: int) -> tuple[int, int]:
    """XLA's "SAME" padding of a stride-1 window of size ``k``: (low, high)."""
    return (k - 1) // 2, k - 1 - (k - 1) // 2


def _conv_nhwc(x: jax.Array, kernel: jax.Array, padding: tuple[int, int]) -> jax.Array:
    """Stride-1 convolution in the one layout XLA:CPU runs fast everywhere: NHWC x HWIO -> NHWC."""
    return jax.lax.conv_general_dilated(
        x, kernel, (1, 1), (padding, padding), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@jax.custom_vjp
def conv_canonical(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """The same 'same' convolution as :func:`conv_xla`, with both backward passes in canonical form.

    XLA:CPU rewrites convolutions into its fast layout (NHWC x HWIO -> NHWC) only in
    the entry computation; the gradients autodiff derives (``f01b_i01o->01bf`` and
    ``b01f_01oi->b01f``) keep their slow generic kernels inside loop bodies
    (``lax.map``, ``fori_loop``), where the trainer runs. Here every pass is written
    as an NHWC x HWIO -> NHWC convolution with explicit transposes, so it stays fast
    inside loops:

    * input gradient: the output gradient convolved with the kernel flipped in space
      and with input/output channels swapped, padded by ``k - 1 - pad``;
    * kernel gradient: the input with batch and channels swapped (``[C, H, W, B]``)
      convolved with the output gradient as a ``[H, W, B, O]`` kernel, giving
      ``[C, k, k, O]``.

    ``[B, H, W, C] x [k, k, C, O] -> [B, H, W, O]``, stride 1, any kernel size.
    """
    return _conv_nhwc(x, kernel, _same_padding(kernel.shape[0]))


def _conv_canonical_fwd(x, kernel):
    return conv_canonical(x, kernel), (x, kernel)


def _conv_canonical_bwd(residuals, dy):
    x, kernel = residuals
    k = kernel.shape[0]
    low, high = _same_padding(k)
    flipped = jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))  # [k, k, O, C]
    dx = _conv_nhwc(dy, flipped, (k - 1 - low, k - 1 - high))
    dk = _conv_nhwc(jnp.transpose(x, (3, 1, 2, 0)), jnp.transpose(dy, (1, 2, 0, 3)), (low, high))  # [C, k, k, O]
    return dx, jnp.transpose(dk, (1, 2, 0, 3))


conv_canonical.defvjp(_conv_canonical_fwd, _conv_canonical_bwd)


CONV_IMPLS: Mapping[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "xla": conv_xla,
    "im2col": conv_im2col,
    "canonical": conv_canonical,
}


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling, stride 2: ``[B, H, W, C] -> [B, H // 2, W // 2, C]`` (H, W even).

    The forward pass is a reshape and a max; the backward pass sends each window's
    gradient to its *first* maximum in row-major order (top-left, top-right,
    bottom-left, bottom-right), as ``nn.max_pool``'s select-and-scatter gradient does,
    as a few elementwise selects instead of a scatter (about a fifth of the step
    otherwise). Ties (common after ReLU) go to one element, never split.
    """
    b, h, w, c = x.shape
    return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def _max_pool_fwd(x):
    y = max_pool_2x2(x)
    return y, (x, y)


def _max_pool_bwd(residuals, dy):
    x, y = residuals
    b, h, w, c = x.shape
    windows = x.reshape(b, h // 2, 2, w // 2, 2, c)
    taken = jnp.zeros(y.shape, bool)
    grads = []
    for dy_, dx_ in ((0, 0), (0, 1), (1, 0), (1, 1)):
        first = (windows[:, :, dy_, :, dx_, :] == y) & ~taken
        taken = taken | first
        grads.append(jnp.where(first, dy, 0.0))
    top = jnp.stack(grads[:2], axis=3)  # [b, h/2, w/2, 2, c]
    bottom = jnp.stack(grads[2:], axis=3)
    dx = jnp.stack([top, bottom], axis=2)  # [b, h/2, 2, w/2, 2, c]
    return (dx.reshape(b, h, w, c).astype(x.dtype),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


class Conv(nn.Module):
    """Conv + bias with a swappable implementation (``"xla"`` or ``"im2col"``)."""

    features: int
    size: int
    kernel_init: Callable
    impl: str = "xla"

    @nn.compact
    def __call__(self, x):
        kernel = self.param(
            "kernel", self.kernel_init, (self.size, self.size, x.shape[-1], self.features)
        )
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        return CONV_IMPLS[self.impl](x, kernel) + bias


class NWSNet(nn.Module):
    """One NWS CNN. Call with ``x: float32 [batch, 32, 32, 3]`` -> logits ``[batch, classes]``.

    Attributes:
      arch: the static architecture.
      conv_impl: ``"xla"`` (``lax.conv``) or ``"im2col"`` (shifted slices + matmul).
    """

    arch: Architecture
    conv_impl: str = "xla"

    @nn.compact
    def __call__(self, x, *, activation, initialization=2, train: bool = False):
        arch = self.arch
        kernel_init = _kernel_init(initialization)
        norm = lambda name: nn.BatchNorm(  # noqa: E731
            use_running_average=not train,
            momentum=BATCH_NORM_MOMENTUM,
            epsilon=BATCH_NORM_EPSILON,
            name=name,
        )
        layer = 0
        for block in arch.conv_channels:
            for channels in block:
                x = Conv(channels, arch.filter_size, kernel_init, self.conv_impl, name=f"conv{layer}")(x)
                if arch.batch_norm:
                    x = norm(f"conv{layer}_bn")(x)
                x = activate(x, activation)
                layer += 1
            x = max_pool_2x2(x)
        x = x.reshape(x.shape[0], -1)
        for i, width in enumerate(arch.fc_widths):
            x = nn.Dense(width, kernel_init=kernel_init, name=f"fc{i}")(x)
            x = activate(x, activation)
            if arch.batch_norm:
                x = norm(f"fc{i}_bn")(x)
            x = nn.Dropout(DROPOUT_RATE, deterministic=not train)(x)
        return nn.Dense(arch.num_classes, kernel_init=kernel_init, name="out")(x)


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
