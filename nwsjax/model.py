"""The NWS CNN family as a Flax module (its flattening order: :mod:`nwsjax.layout`).

Network (reference, "Architecture family"), input ``[batch, 32, 32, 3]``:

* three conv blocks; block ``c`` has ``width_conv * 2**c`` channels and holds 1, 1, 1
  (depth 3), 1, 1, 2 (depth 4) or 1, 2, 2 (depth 5) conv layers, then 2x2 max pooling;
  a conv layer is conv + bias (stride 1, "same"), batch norm, activation;
* ``depth_fc`` dense layers of width ``width_fc * 2**-i``: dense + bias, activation,
  batch norm, dropout 0.5;
* an output dense layer of ``num_classes`` logits: :data:`OUTPUT_UNITS` (20) for every
  dataset of up to 20 classes, as the reference trained it (labels use the first units;
  the softmax runs over all of them).

Activation and initialization are call arguments, not module fields, so one compiled
program serves members that differ in them: pass a Python ``int`` (an index into
:data:`ACTIVATIONS` / :data:`INITIALIZATIONS`) for a single model, or a traced int32
scalar inside a population step. Initial weights follow :mod:`nwsjax.initialization`
(drawn at the family's largest shapes, then cut), and dropout masks are drawn at the
family's widths, so neither depends on the program a member trains in. A *padded*
``NWSNet`` also takes the member's own architecture (:class:`MemberShape`) as data and
masks everything else (:mod:`nwsjax.padding`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nwsjax import initialization as init
from nwsjax.space import PROPERTIES, MemberConfig

__all__ = [
    "ACTIVATIONS",
    "INITIALIZATIONS",
    "Architecture",
    "NWSNet",
    "MemberShape",
    "OUTPUT_UNITS",
    "activate",
]

OUTPUT_UNITS = 20  # the reference's output layer, whatever the dataset's classes
BATCH_NORM_MOMENTUM = 0.99  # TF1 tf.layers.batch_normalization defaults
BATCH_NORM_EPSILON = 1e-3
DROPOUT_RATE = 0.5

ACTIVATIONS: tuple[Callable[[jax.Array], jax.Array], ...] = (
    nn.relu,
    nn.elu,
    nn.sigmoid,
    jnp.tanh,
)

INITIALIZATIONS: tuple[str, ...] = PROPERTIES["initialization"].options  # see nwsjax.initialization

_BLOCK_DEPTHS = {3: (1, 1, 1), 4: (1, 1, 2), 5: (1, 2, 2)}


@dataclasses.dataclass(frozen=True)
class Architecture:
    """The static shape of one NWS network: everything that changes its parameter shapes.

    ``num_classes`` is the width of the output layer: :data:`OUTPUT_UNITS` for the
    reference's networks (:meth:`of`), more only for a dataset of more classes; a
    public zoo's networks may have another width (e.g. 10).
    """

    filter_size: int = 5
    depth_conv: int = 3
    depth_fc: int = 2
    width_conv: int = 8
    width_fc: int = 128
    batch_norm: bool = True
    num_classes: int = OUTPUT_UNITS

    @classmethod
    def of(cls, member: MemberConfig, num_classes: int) -> Architecture:
        """The architecture of ``member`` for a dataset of ``num_classes`` classes: an output layer of
        ``max(OUTPUT_UNITS, num_classes)`` units, as the reference trained every dataset."""
        return cls(
            member.filter_size,
            member.depth_conv,
            member.depth_fc,
            member.width_conv,
            member.width_fc,
            member.batch_norm == "on",
            max(OUTPUT_UNITS, num_classes),
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


class MemberShape(NamedTuple):
    """A member's own architecture inside a padded program: int32 scalars (traced in a cohort).

    The program's :class:`Architecture` gives every static shape; the member's weights
    are the leading block of each kernel (conv kernels: the centred taps), its missing
    conv layers are skipped and its output layer reads its last hidden layer.
    """

    filter_size: Any
    depth_conv: Any
    depth_fc: Any
    width_conv: Any
    width_fc: Any

    @classmethod
    def of(cls, arch: Architecture) -> MemberShape:
        return cls(*(np.int32(getattr(arch, field)) for field in cls._fields))


# Conv layers per block, indexed by depth_conv (rows 0-2 unused).
_DEPTH_TABLE = np.array([(1, 1, 1)] * 3 + [_BLOCK_DEPTHS[d] for d in (3, 4, 5)], np.int32)


def _below(n: int, limit) -> jax.Array:
    """bool [n]: index < ``limit`` (a traced or static int)."""
    return jnp.arange(n) < limit


def conv_mask(program: tuple[int, int, int], member: tuple, active) -> tuple[jax.Array, jax.Array]:
    """float32 masks (kernel ``[K, K, C_in, C_out]``, bias ``[C_out]``) of a member's conv layer.

    Args:
      program: the program's ``(K, C_in, C_out)``.
      member: the member's ``(k, c_in, c_out)`` (traced ints); its ``k x k`` taps are centred.
      active: traced bool, False where the member has no such layer (everything masked).
    """
    size, cin, cout = program
    k, member_in, member_out = member
    taps = jnp.abs(jnp.arange(size) - (size - 1) // 2) <= (k - 1) // 2
    out = _below(cout, member_out) & active
    mask = taps[:, None, None, None] & taps[None, :, None, None] & _below(cin, member_in)[:, None] & out
    return mask.astype(jnp.float32), out.astype(jnp.float32)


class Conv(nn.Module):
    """Conv + bias, stride 1, 'same', with a swappable implementation (:data:`CONV_IMPLS`).

    ``kernel_init(rng, shape)`` is used when the model is initialized; ``masks``
    (kernel, bias) zero a padded member's missing weights in the forward pass, so
    their gradients are exactly zero.
    """

    features: int
    size: int
    impl: str = "xla"

    @nn.compact
    def __call__(self, x, kernel_init=nn.initializers.zeros, masks=None):
        kernel = self.param("kernel", kernel_init, (self.size, self.size, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        if masks is not None:
            kernel, bias = kernel * masks[0], bias * masks[1]
        return CONV_IMPLS[self.impl](x, kernel) + bias


class Dense(nn.Module):
    """Dense + bias: ``[B, in] -> [B, features]``, with masks as :class:`Conv`."""

    features: int

    @nn.compact
    def __call__(self, x, kernel_init=nn.initializers.zeros, masks=None):
        kernel = self.param("kernel", kernel_init, (x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        if masks is not None:
            kernel, bias = kernel * masks[0], bias * masks[1]
        return jnp.dot(x, kernel) + bias


def dropout(key: jax.Array, x: jax.Array, layer: int) -> jax.Array:
    """Dropout of hidden dense layer ``layer`` (``x``: ``[B, units]``).

    The keep mask is drawn at the family's width of that layer (192 / 2**layer) and
    its first units are used, so a member's mask does not depend on how wide the
    program it trains in is.
    """
    keep_rate = 1.0 - DROPOUT_RATE
    width = max(init.FAMILY_WIDTH_FC >> layer, x.shape[-1])
    keep = jax.random.bernoulli(key, keep_rate, (x.shape[0], width))[:, : x.shape[-1]]
    return jnp.where(keep, x / keep_rate, 0.0)


def _true_dims(arch: Architecture, shape: MemberShape | None) -> MemberShape:
    """The member's dims: ``shape`` in a padded program, else the program's own (Python ints)."""
    if shape is not None:
        return shape
    return MemberShape(arch.filter_size, arch.depth_conv, arch.depth_fc, arch.width_conv, arch.width_fc)


class _Layer(NamedTuple):
    """How one layer's kernel is initialized (:func:`nwsjax.initialization.kernel`) and masked.

    ``masks``: float32 (kernel, per-unit) masks of a padded program, else None;
    ``active``: a traced bool where a padded member may lack the (conv) layer, else None.
    """

    role: int
    family: tuple[int, ...]
    cut: Callable[[jax.Array], jax.Array]
    fans: tuple[Any, Any]
    masks: tuple[jax.Array, jax.Array] | None = None
    active: Any = None


def _conv_layer(arch: Architecture, shape: MemberShape | None, block: int, index: int, layer: int,
                channels_in: int, width: int) -> _Layer:
    """Conv layer ``index`` of ``block`` (network layer ``layer``): ``[k, k, channels_in, width]`` in the program."""
    dims = _true_dims(arch, shape)
    cout = dims.width_conv * 2**block
    cin = 3 if layer == 0 else (dims.width_conv * 2 ** (block - 1) if index == 0 else cout)
    size = arch.filter_size
    family_in = 3 if layer == 0 else init.FAMILY_WIDTH_CONV * 2 ** (block - (index == 0))
    family = (max(init.FAMILY_FILTER, size),) * 2 + (max(family_in, channels_in),
                                                     max(init.FAMILY_WIDTH_CONV * 2**block, width))
    lo = (family[0] - size) // 2
    cut = lambda d: d[lo : lo + size, lo : lo + size, :channels_in, :width]  # noqa: E731
    fans = (dims.filter_size**2 * cin, dims.filter_size**2 * cout)
    if shape is None:
        return _Layer(init.conv_role(block, index), family, cut, fans)
    active = index < jnp.asarray(_DEPTH_TABLE)[shape.depth_conv, block] if index > 0 else None
    masks = conv_mask((size, channels_in, width), (shape.filter_size, cin, cout), True if active is None else active)
    return _Layer(init.conv_role(block, index), family, cut, fans, masks, active)


def _dense_layer(arch: Architecture, shape: MemberShape | None, layer: int, n_in: int, width: int,
                 conv_map: tuple[int, int]) -> _Layer:
    """Hidden dense layer ``layer``: ``[n_in, width]`` in the program; ``conv_map``: (pixels, channels) flattened into fc0."""
    dims = _true_dims(arch, shape)
    member_out = dims.width_fc >> layer
    if layer == 0:
        spatial, channels = conv_map
        family = (spatial, max(4 * init.FAMILY_WIDTH_CONV, channels), max(init.FAMILY_WIDTH_FC, width))
        cut = lambda d: d[:, :channels, :width].reshape(-1, width)  # noqa: E731
        fans = (spatial * dims.width_conv * 4, member_out)
    else:
        family = (max(init.FAMILY_WIDTH_FC >> (layer - 1), n_in), max(init.FAMILY_WIDTH_FC >> layer, width))
        cut = lambda d: d[:n_in, :width]  # noqa: E731
        fans = (dims.width_fc >> (layer - 1), member_out)
    if shape is None:
        return _Layer(init.fc_role(layer), family, cut, fans)
    if layer == 0:
        rows = jnp.tile(_below(conv_map[1], dims.width_conv * 4), conv_map[0])
    else:
        rows = _below(n_in, dims.width_fc >> (layer - 1))
    units = _below(width, member_out) & (layer < shape.depth_fc)  # no unit of a layer it lacks
    return _Layer(init.fc_role(layer), family, cut, fans, ((rows[:, None] & units).astype(jnp.float32),
                                                           units.astype(jnp.float32)))


def _output_layer(arch: Architecture, shape: MemberShape | None, n_in: int) -> _Layer:
    """The output layer, ``[n_in, num_classes]``; in a padded program it reads the member's last hidden layer."""
    dims = _true_dims(arch, shape)
    last_in = dims.width_fc >> (dims.depth_fc - 1)
    family = (max(init.FAMILY_WIDTH_FC, n_in), arch.num_classes)
    fans = (last_in, arch.num_classes)
    if shape is None:
        return _Layer(init.OUT_ROLE, family, lambda d: d[:n_in], fans)
    rows = _below(n_in, last_in).astype(jnp.float32)
    masks = (rows[:, None] * jnp.ones(arch.num_classes), jnp.ones(arch.num_classes))
    return _Layer(init.OUT_ROLE, family, lambda d: d[:n_in], fans, masks)


def _last_hidden(hidden: list[jax.Array], depth_fc, width: int) -> jax.Array:
    """The member's last hidden layer (its ``depth_fc``-th), zero-padded to ``width`` units: ``[B, width]``."""
    x = jnp.zeros((hidden[0].shape[0], width), hidden[0].dtype)
    for i, h in enumerate(hidden):
        x = jnp.where(depth_fc == i + 1, jnp.pad(h, ((0, 0), (0, width - h.shape[-1]))), x)
    return x


class NWSNet(nn.Module):
    """One NWS CNN, or a padded program of several. ``x: float32 [batch, 32, 32, 3]`` -> logits ``[batch, classes]``.

    Attributes:
      arch: the program's architecture (a padded program: at least every member's).
      conv_impl: ``"xla"``, ``"im2col"`` or ``"canonical"`` (:data:`CONV_IMPLS`).
      padded: members of other architectures train inside ``arch`` (:mod:`nwsjax.padding`);
        every call then passes the member's ``shape``. The output layer then reads
        the member's last hidden layer, zero-padded to ``width_fc`` units.

    Call arguments: ``activation`` and ``initialization`` are indices (a Python int, or
    a traced int32 in a cohort); ``initialization`` only matters in ``init``, which
    follows :mod:`nwsjax.initialization` from the ``"params"`` key.
    """

    arch: Architecture
    conv_impl: str = "xla"
    padded: bool = False

    @nn.compact
    def __call__(self, x, *, activation, initialization=2, train: bool = False, shape: MemberShape | None = None):
        if self.padded != (shape is not None):
            raise ValueError(f"NWSNet(padded={self.padded}) called with shape={shape}")
        arch = self.arch
        key = self.make_rng("params") if self.is_initializing() else None

        def kernel_init(plan: _Layer):
            if key is None:
                return nn.initializers.zeros
            mask = None if plan.masks is None else plan.masks[0]
            return lambda _rng, _shape: init.kernel(jax.random.fold_in(key, plan.role), initialization, plan.family,
                                                    plan.cut, *plan.fans, mask)

        def norm(name, masks):
            scale_init = nn.initializers.ones
            if key is not None and masks is not None:
                scale_init = lambda _rng, _shape, _dtype=None: masks[1]  # noqa: E731
            return nn.BatchNorm(
                use_running_average=not train, momentum=BATCH_NORM_MOMENTUM, epsilon=BATCH_NORM_EPSILON,
                scale_init=scale_init, name=name,
            )

        layer = 0
        for block, channels in enumerate(arch.conv_channels):
            for index, width in enumerate(channels):
                plan = _conv_layer(arch, shape, block, index, layer, x.shape[-1], width)
                y = Conv(width, arch.filter_size, self.conv_impl, name=f"conv{layer}")(x, kernel_init(plan), plan.masks)
                if arch.batch_norm:
                    y = norm(f"conv{layer}_bn", plan.masks)(y)
                y = activate(y, activation)
                x = y if plan.active is None else jnp.where(plan.active, y, x)
                layer += 1
            x = max_pool_2x2(x)
        conv_map = (x.shape[1] * x.shape[2], x.shape[3])
        x = x.reshape(x.shape[0], -1)
        hidden = []
        for i, width in enumerate(arch.fc_widths):
            plan = _dense_layer(arch, shape, i, x.shape[-1], width, conv_map)
            x = Dense(width, name=f"fc{i}")(x, kernel_init(plan), plan.masks)
            x = activate(x, activation)
            if arch.batch_norm:
                x = norm(f"fc{i}_bn", plan.masks)(x)
            if train:
                x = dropout(self.make_rng("dropout"), x, i)
            hidden.append(x)
        if shape is not None:
            x = _last_hidden(hidden, shape.depth_fc, arch.width_fc)
        plan = _output_layer(arch, shape, x.shape[-1])
        return Dense(arch.num_classes, name="out")(x, kernel_init(plan), plan.masks)
