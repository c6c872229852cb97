"""Meta-models: Flax networks over slices of weights, and per-layer weight statistics.

Every Flax meta-model is called as ``model.apply(variables, x, position, train=...)``:

* ``x``: float32 ``[batch, slices, length]``, consecutive weights;
* ``position``: float32 ``[batch, slices]``, where each slice starts, 0..1 within
  the range its starts are drawn from;
* returns ``[batch, outputs]``: class logits, or one value for regression.

Models:

* :class:`DMC`: the reference's local deep meta-classifier, a 1D CNN over one slice
  (``slices == 1``). Its deeper variant (used for slices longer than 40,000 weights)
  also serves as the *global* model over a whole vector.
* :class:`SliceSet`: ours. Several slices of a network, each encoded by a light
  patch CNN with global pooling, pooled over the set (mean and attention).
* :func:`weight_statistics`: per-layer statistics of a whole vector for
  gradient-boosted trees (the ``stats`` baseline, see :mod:`nwsjax.meta.train`).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from collections.abc import Sequence

from nwsjax.layout import Segment, layout
from nwsjax.model import Architecture

__all__ = [
    "DMC",
    "SliceSet",
    "UnitSet",
    "DEEP_LENGTH",
    "TEST_NORMS",
    "STATISTICS",
    "UNIT_FEATURES",
    "UNIT_SPREAD",
    "unit_spread",
    "unit_spread_names",
    "magnitude",
    "statistic_names",
    "unit_count",
    "unit_tokens",
    "weight_statistics",
]

DEEP_LENGTH = 40_000  # the reference uses its deeper DMC for slices longer than this
TEST_NORMS = ("batch", "running")  # DMC.test_norm: batch statistics (the reference) or running averages
_BN_MOMENTUM = 0.9  # TensorLayer BatchNormLayer defaults, as in the reference
_BN_EPSILON = 1e-5
_glorot = nn.initializers.glorot_normal()


def _norm(train: bool, name: str | None = None) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=_BN_MOMENTUM, epsilon=_BN_EPSILON, name=name)


@jax.custom_vjp
def _pool(x: jnp.ndarray) -> jnp.ndarray:
    """2x max pooling along the length, 'valid' (an odd last weight is dropped): ``[B, L, C] -> [B, L // 2, C]``.

    The values and gradients of ``nn.max_pool(x, (2,), strides=(2,), padding="VALID")``
    (a pair's gradient goes to its first maximum, ties included), written as a reshape
    and a max with a select for the backward pass instead of select-and-scatter: the
    DMC's train step is about 14% faster on one CPU core (docs/meta.md, Throughput).
    """
    return _pairs(x).max(axis=2)


def _pairs(x: jnp.ndarray) -> jnp.ndarray:
    b, length, c = x.shape
    return x[:, : length // 2 * 2].reshape(b, length // 2, 2, c)


def _pool_fwd(x):
    pairs = _pairs(x)
    return pairs.max(axis=2), (pairs[:, :, 0] >= pairs[:, :, 1], x.shape[1])


def _pool_bwd(residuals, dy):
    first, length = residuals
    zero = jnp.zeros_like(dy)
    dx = jnp.stack([jnp.where(first, dy, zero), jnp.where(first, zero, dy)], axis=2).reshape(dy.shape[0], -1, dy.shape[2])
    return (jnp.pad(dx, ((0, 0), (0, length % 2), (0, 0))),)


_pool.defvjp(_pool_fwd, _pool_bwd)


def dmc_plan(length: int, deep: bool) -> list[tuple[int, bool]]:
    """The DMC's conv layers as ``(channels, pool_after)``, for a slice of ``length`` weights.

    Small variant (slices up to 40,000): 8 p, 16 p, 32, 64 p, 128, 256, then six 256
    layers, each preceded by a pooling while the length exceeds 50, then a final pooling.
    Deep variant: 8, 16, 32, 64, 128 and four 128 layers each followed by pooling, then
    pairs (128, 256), (256, 256), (256, 256), each pair followed by pooling.
    """
    if deep:
        singles = [(c, True) for c in (8, 16, 32, 64, 128, 128, 128, 128, 128)]
        pairs = [(128, False), (256, True), (256, False), (256, True), (256, False), (256, True)]
        return singles + pairs
    plan = [(8, True), (16, True), (32, False), (64, True), (128, False), (256, False)]
    size = length // 8
    for _ in range(6):
        if size > 50:
            plan[-1] = (plan[-1][0], True)
            size //= 2
        plan.append((256, False))
    plan[-1] = (256, True)
    return plan


class DMC(nn.Module):
    """The reference's local deep meta-classifier (Eilertsen et al. 2020), on one slice.

    Conv layers: kernel 5, 'same', + bias, ReLU, batch norm (the reference's order);
    2x max pooling per :func:`dmc_plan`. Then four dense layers of 1024 and one of 64
    (dense + bias, ReLU, batch norm, dropout 0.5), then the output layer. Glorot-normal
    weights, zero biases.

    Attributes:
      outputs: classes (or 1 for regression).
      deep: the deeper variant; None chooses it for slices longer than 40,000.
      width: multiplies every channel count and dense width (1.0 is the reference;
        smaller values make tests fast).
      dropout: dropout rate of the dense layers.
      test_norm: what batch norm normalizes by outside training. ``"batch"`` (the
        reference: its batch-norm layers stay in training mode, so a test batch is
        normalized with its own statistics; call ``apply`` with
        ``mutable=["batch_stats"]`` and drop the updated averages); ``"running"``:
        the running averages gathered in training.
    """

    outputs: int
    deep: bool | None = None
    width: float = 1.0
    dropout: float = 0.5
    test_norm: str = "batch"

    @nn.compact
    def __call__(self, x, position=None, *, train: bool = False, mask=None):
        """``mask``: bool ``[batch]``, the samples whose slices count in batch statistics
        (padding left out); None: all."""
        del position  # the DMC sees the weights only
        if self.test_norm not in TEST_NORMS:
            raise ValueError(f"test_norm={self.test_norm!r}: choose one of {', '.join(TEST_NORMS)}")
        by_batch = train or self.test_norm == "batch"
        batch, slices, length = x.shape
        h = x.reshape(batch * slices, length, 1)
        counted = None if mask is None else jnp.repeat(jnp.asarray(mask, bool), slices)  # [batch * slices]
        deep = length > DEEP_LENGTH if self.deep is None else self.deep
        scale = lambda n: max(1, int(round(n * self.width)))  # noqa: E731
        for channels, pool in dmc_plan(length, deep):
            h = nn.Conv(scale(channels), (5,), padding="SAME", kernel_init=_glorot)(h)
            h = _norm(by_batch)(nn.relu(h), mask=None if counted is None else counted[:, None, None])
            if pool and h.shape[1] >= 2:
                h = _pool(h)
        h = h.reshape(h.shape[0], -1)
        for features in (1024, 1024, 1024, 1024, 64):
            h = nn.Dense(scale(features), kernel_init=_glorot)(h)
            h = _norm(by_batch)(nn.relu(h), mask=None if counted is None else counted[:, None])
            h = nn.Dropout(self.dropout, deterministic=not train)(h)
        out = nn.Dense(self.outputs, kernel_init=_glorot)(h)
        return out.reshape(batch, slices, -1).mean(axis=1)


class SliceSet(nn.Module):
    """A set of slices of one network, encoded one by one and pooled over the set.

    Slice encoder: every weight enters twice, as is and on a signed log scale that
    separates magnitudes from 1e-4 to 1 (:func:`magnitude`). The slice is cut into
    patches of ``patch`` consecutive weights (tokens); a dense layer embeds each patch,
    ``depth`` residual conv layers (kernel 3) mix neighbouring tokens, and mean, max
    and standard deviation over the tokens summarize the slice. Next to it, with
    ``bins``, cumulative histograms of the slice's log-scale values and of the log-scale
    steps between neighbours, and its fraction of exact zeros: the slice's distribution, the
    kind of statistics that trees do well with, at no cost in parameters. With
    ``use_position`` the slice's relative position is added as Fourier features. Set
    pooling: the mean of the slice embeddings next to an attention-weighted mean (a
    few telling slices can dominate); a two-layer head gives the outputs. Any number of
    slices works at test time, so one model reads one slice or 64.

    Attributes:
      outputs: classes (or 1 for regression).
      patch: weights per token.
      width: token and embedding width.
      depth: residual conv layers over tokens.
      bins: bins of the distribution summary (0: none).
      head: width of the hidden layer of the head.
      dropout: dropout rate before the output layer.
      use_position: feed the slices' relative positions.
    """

    outputs: int
    patch: int = 16
    width: int = 64
    depth: int = 2
    bins: int = 16
    head: int = 256
    dropout: float = 0.3
    use_position: bool = True

    @nn.compact
    def __call__(self, x, position=None, *, train: bool = False):
        batch, slices, length = x.shape
        flat = x.reshape(batch * slices, length)
        scaled = magnitude(flat)
        tokens = length // self.patch
        h = jnp.stack([flat, scaled], -1)[:, : tokens * self.patch].reshape(batch * slices, tokens, 2 * self.patch)
        h = nn.Dense(self.width, kernel_init=_glorot)(h)
        h = nn.relu(_norm(train)(h))
        for _ in range(self.depth):
            r = nn.Conv(self.width, (3,), padding="SAME", kernel_init=_glorot)(h)
            h = h + nn.relu(_norm(train)(r))
        mean = h.mean(axis=1)
        summary = jnp.concatenate([mean, h.max(axis=1), jnp.sqrt(((h - mean[:, None]) ** 2).mean(axis=1) + 1e-6)], -1)
        e = nn.Dense(self.width, kernel_init=_glorot)(summary)
        if self.bins:
            steps = magnitude(jnp.abs(jnp.diff(flat, axis=-1)))
            density = [_histogram(scaled, -1.25, 1.25, self.bins), _histogram(steps, 0.0, 1.25, self.bins),
                       (flat == 0).mean(-1, keepdims=True)]
            e = e + nn.Dense(self.width, kernel_init=_glorot)(jnp.concatenate(density, -1))
        if self.use_position and position is not None:
            e = e + nn.Dense(self.width, kernel_init=_glorot)(_fourier(position.reshape(-1)))
        e = nn.relu(_norm(train)(e)).reshape(batch, slices, self.width)
        score = nn.Dense(1, kernel_init=_glorot)(nn.tanh(nn.Dense(self.width, kernel_init=_glorot)(e)))
        attention = nn.softmax(score, axis=1)
        pooled = jnp.concatenate([e.mean(axis=1), (attention * e).sum(axis=1)], -1)
        h = nn.relu(_norm(train)(nn.Dense(self.head, kernel_init=_glorot)(pooled)))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return nn.Dense(self.outputs, kernel_init=_glorot)(h)


def _histogram(values: jnp.ndarray, low: float, high: float, bins: int) -> jnp.ndarray:
    """Cumulative histogram: the fraction of each row of ``[n, length]`` values at or above
    each of ``bins`` edges spread over ``[low, high]`` -> ``[n, bins]``."""
    edges = jnp.linspace(low, high, bins)
    return (values[..., None] >= edges).astype(values.dtype).mean(axis=1)


def magnitude(x):
    """Signed log scale: 0 -> 0, 1e-4 -> 0.08, 1e-2 -> 0.5, 1 -> 1, 10 -> 1.25 (numpy or jax arrays)."""
    xp = np if isinstance(x, np.ndarray) else jnp
    return xp.sign(x) * xp.log1p(xp.abs(x) * 1e4) / np.log1p(1e4)


def _fourier(position: jnp.ndarray, frequencies: int = 4) -> jnp.ndarray:
    """``[n]`` positions in 0..1 -> ``[n, 1 + 2 * frequencies]`` features."""
    angles = jnp.pi * position[:, None] * (2.0 ** jnp.arange(frequencies))
    return jnp.concatenate([position[:, None], jnp.sin(angles), jnp.cos(angles)], -1)


# --------------------------------------------------------------------------- #
# Per-unit tokens (the units model)
# --------------------------------------------------------------------------- #

UNIT_VALUES = ("mean", "std", "min", "q10", "q50", "q90", "max", "mean_abs", "bias", "bn_scale", "bn_offset",
               "bn_mean", "bn_var")
UNIT_FEATURES = 2 * len(UNIT_VALUES) + 3


Layout = Architecture | Sequence[Segment]  # an architecture of our family, or any zoo's ``layout(member)``


def segments_of(spec: Layout) -> list[Segment]:
    """The segments of a flat vector: ``layout(spec)`` for an architecture, else ``spec`` itself."""
    return layout(spec) if isinstance(spec, Architecture) else list(spec)


def _layers(segments: list[Segment], part: str) -> list[str]:
    """Layers with a kernel (units) in ``part``, in vector order."""
    return [s.path[0] for s in segments if s.path[-1] == "kernel" and part in ("whole", s.part)]


def unit_count(spec: Layout, part: str = "whole") -> int:
    """Units (output channels and neurons) of the layers of ``part``."""
    segments = segments_of(spec)
    shapes = {s.path: s.shape for s in segments}
    return sum(shapes[(layer, "kernel")][-1] for layer in _layers(segments, part))


def unit_tokens(vector: np.ndarray, spec: Layout, part: str = "whole") -> tuple[np.ndarray, np.ndarray]:
    """One token per unit of a flat NWS vector: what the unit computes, summarized.

    A unit's incoming weights are contiguous in NWS order, so they are one row of its
    layer's kernel. A token holds, of the incoming weights, mean, standard deviation,
    min, quantiles 10/50/90% (nearest rank), max and mean absolute value, then the unit's bias,
    batch-norm scale and offset, and its batch norm's moving mean and variance where the
    vector holds them (the released layout); 0 without a bias, 1 and 0 without batch norm, 0
    and 1 without moving statistics. All of these as is and on
    the signed log scale of :func:`magnitude`; then the layer's relative depth (0 first,
    1 last of the part) and whether it is a conv layer (4-D kernel) and the output layer
    (the network's last layer with a kernel).

    Args:
      vector: float32 ``[n_weights]`` in NWS order (kernels grouped by output unit).
      spec: an architecture of our family, or the vector's segments (``zoo.layout(member)``,
        e.g. of a Small CNN Zoo network); a layer ``L``'s batch norm is ``L_bn``.

    Returns:
      ``(tokens float32 [units, UNIT_FEATURES], layer int32 [units])``.
    """
    ordered_segments = segments_of(spec)
    segments = {s.path: s for s in ordered_segments}
    last = _layers(ordered_segments, "whole")[-1]

    def values(path, rows):
        segment = segments.get(path)
        if segment is None:
            return None
        return vector[segment.offset : segment.offset + segment.size].reshape(rows, -1)

    layers = _layers(ordered_segments, part)
    tokens, numbers = [], []
    for number, layer in enumerate(layers):
        kernel = segments[(layer, "kernel")]
        units = kernel.shape[-1]
        w = values((layer, "kernel"), units)
        bias = values((layer, "bias"), units)
        scale = values((f"{layer}_bn", "scale"), units)
        offset = values((f"{layer}_bn", "bias"), units)
        moving_mean = values((f"{layer}_bn", "mean"), units)
        moving_var = values((f"{layer}_bn", "var"), units)
        ordered = np.sort(w, axis=1)
        ranks = np.round(np.array([0.1, 0.5, 0.9]) * (w.shape[1] - 1)).astype(int)
        columns = np.stack([
            w.mean(1), w.std(1), ordered[:, 0], *ordered[:, ranks].T, ordered[:, -1], np.abs(w).mean(1),
            np.zeros(units) if bias is None else bias[:, 0],
            np.ones(units) if scale is None else scale[:, 0], np.zeros(units) if offset is None else offset[:, 0],
            np.zeros(units) if moving_mean is None else moving_mean[:, 0],
            np.ones(units) if moving_var is None else moving_var[:, 0],
        ], 1)
        depth = number / max(len(layers) - 1, 1)
        kind = np.tile([depth, len(kernel.shape) == 4, layer == last], (units, 1))
        tokens.append(np.concatenate([columns, np.asarray(magnitude(columns)), kind], 1))
        numbers.append(np.full(units, number, np.int32))
    return np.concatenate(tokens).astype(np.float32), np.concatenate(numbers)


class UnitSet(nn.Module):
    """Ours: a whole network as a set of per-unit tokens (:func:`unit_tokens`), pooled layer by layer.

    A two-layer MLP embeds every token (layer-normalized); each layer's tokens are pooled by their mean
    and standard deviation (invariant to the order of units, which training does not
    fix); a layer embedding adds Fourier features of the layer's depth; the layers are
    pooled by their mean and an attention-weighted mean; a two-layer head predicts.
    Padding tokens (layer -1) are ignored.

    Training subsamples units: every training pass keeps each unit with probability
    ``keep`` (drawn from the ``"dropout"`` RNG), so the per-layer pooling sees a
    different random subset of a layer's units each time. As the pooling does not care
    which units it averages, this is an augmentation that costs nothing; at evaluation
    every unit is used. On the 320-network zoo of docs/results.md, ``keep=0.5`` raised
    test accuracy over ``keep=1`` on all six categorical targets (by 1 to 9 points, each
    inside the 95% intervals; the mean by 4.1 points); ``keep=0.25`` was below 0.5 on five.

    Attributes:
      outputs: classes (or 1 for regression).
      width: token and layer embedding width.
      layers: the most layers a network has (5 conv + 4 FC + output).
      head: width of the hidden layer of the head.
      dropout: dropout rate before the output layer.
      keep: fraction of units a training pass keeps (1: no subsampling).
    """

    outputs: int
    width: int = 128
    layers: int = 10
    head: int = 256
    dropout: float = 0.3
    keep: float = 0.5

    @nn.compact
    def __call__(self, x, position, *, train: bool = False):
        member = jax.nn.one_hot(position.astype(jnp.int32), self.layers, dtype=x.dtype)  # [B, U, layers]; pads 0
        if train and self.keep < 1:
            kept = jax.random.bernoulli(self.make_rng("dropout"), self.keep, position.shape)  # [B, U]
            member = member * kept[..., None].astype(x.dtype)
        h = nn.relu(nn.Dense(self.width, kernel_init=_glorot)(nn.LayerNorm()(x)))
        h = nn.relu(nn.Dense(self.width, kernel_init=_glorot)(h))
        count = member.sum(1)[..., None]  # [B, layers, 1]
        mean = jnp.einsum("bul,bud->bld", member, h) / jnp.maximum(count, 1)
        square = jnp.einsum("bul,bud->bld", member, h**2) / jnp.maximum(count, 1)
        std = jnp.sqrt(jnp.maximum(square - mean**2, 0) + 1e-6)
        depth = (jnp.einsum("bul,bu->bl", member, x[..., -3]) / jnp.maximum(count[..., 0], 1))
        e = nn.Dense(self.width, kernel_init=_glorot)(jnp.concatenate([mean, std], -1))
        e = nn.relu(nn.LayerNorm()(e + nn.Dense(self.width, kernel_init=_glorot)(_fourier(depth.reshape(-1)).reshape(*depth.shape, -1))))
        present = count[..., 0] > 0  # [B, layers]
        score = nn.Dense(1, kernel_init=_glorot)(nn.tanh(nn.Dense(self.width, kernel_init=_glorot)(e)))[..., 0]
        attention = nn.softmax(jnp.where(present, score, -1e9), axis=1)
        average = (e * present[..., None]).sum(1) / jnp.maximum(present.sum(1, keepdims=True), 1)
        pooled = jnp.concatenate([average, (attention[..., None] * e).sum(1)], -1)
        h = nn.relu(nn.LayerNorm()(nn.Dense(self.head, kernel_init=_glorot)(pooled)))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        return nn.Dense(self.outputs, kernel_init=_glorot)(h)


# --------------------------------------------------------------------------- #
# Per-layer statistics (the stats baseline)
# --------------------------------------------------------------------------- #

STATISTICS = ("mean", "std", "min", "q10", "q25", "q50", "q75", "q90", "max", "mean_abs", "l2")
_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def _describe(values: np.ndarray) -> list[float]:
    values = values.astype(np.float64)
    quantiles = np.quantile(values, _QUANTILES)
    return [values.mean(), values.std(), values.min(), *quantiles, values.max(),
            np.abs(values).mean(), np.sqrt((values**2).sum())]


def statistic_names(spec: Layout, part: str = "whole") -> list[str]:
    """Feature names of :func:`weight_statistics`, e.g. ``"conv0/kernel:std"``."""
    groups = [s.path for s in segments_of(spec) if part in ("whole", s.part)]
    groups = ["/".join(p) for p in groups] + [p for p in ("conv", "fc") if part in ("whole", p)]
    return [f"{g}:{s}" for g in groups for s in STATISTICS]


def weight_statistics(vector: np.ndarray, spec: Layout, part: str = "whole") -> np.ndarray:
    """Statistics of every parameter array of a flat vector, and of its conv and FC parts.

    Per array (and part): mean, standard deviation, min, quantiles 10/25/50/75/90%,
    max, mean absolute value and L2 norm. ``spec`` is an architecture or the vector's
    segments (as for :func:`unit_tokens`). Returns float32 ``[features]`` named by
    :func:`statistic_names`; networks of other architectures have other names, which
    the baseline aligns (missing ones are NaN).
    """
    features: list[float] = []
    conv_end = 0
    for segment in segments_of(spec):
        if segment.part == "conv":
            conv_end = segment.offset + segment.size
        if part in ("whole", segment.part):
            features += _describe(vector[segment.offset : segment.offset + segment.size])
    for name, values in (("conv", vector[:conv_end]), ("fc", vector[conv_end:])):
        if part in ("whole", name):
            features += _describe(values)
    return np.asarray(features, np.float32)


# --------------------------------------------------------------------------- #
# The spread of a layer's units (the unitstats model's extra features)
# --------------------------------------------------------------------------- #

UNIT_SPREAD = ("mean", "std", "min", "q10", "q50", "q90", "max")


def unit_spread_names(spec: Layout, part: str = "whole") -> list[str]:
    """Feature names of :func:`unit_spread`, e.g. ``"conv2/units:bias:std"``."""
    return [f"{layer}/units:{value}:{stat}" for layer in _layers(segments_of(spec), part)
            for value in UNIT_VALUES for stat in UNIT_SPREAD]


def unit_spread(vector: np.ndarray, spec: Layout, part: str = "whole") -> np.ndarray:
    """How a layer's units differ: statistics over the units of each value of their tokens.

    For every layer with a kernel in ``part`` and every value of a unit's token
    (:data:`UNIT_VALUES`: its incoming weights' mean, spread and quantiles, its bias, its
    batch norm's scale, offset and moving statistics), the mean, standard deviation, min,
    quantiles 10/50/90% and max over the layer's units. :func:`weight_statistics`
    describes each parameter array as one population of numbers; these describe the
    population of units (how unequal their norms, biases or moving variances are).

    Returns float32 ``[layers * len(UNIT_VALUES) * len(UNIT_SPREAD)]``, named by
    :func:`unit_spread_names`.
    """
    tokens, layer = unit_tokens(vector, spec, part)
    raw = tokens[:, : len(UNIT_VALUES)].astype(np.float64)
    features = []
    for number in range(int(layer.max()) + 1 if len(layer) else 0):
        values = raw[layer == number]  # [units, values]
        quantiles = np.quantile(values, (0.1, 0.5, 0.9), axis=0, method="nearest")
        features.append(np.stack([values.mean(0), values.std(0), values.min(0), *quantiles, values.max(0)], 1))
    return np.concatenate(features).reshape(-1).astype(np.float32) if features else np.zeros(0, np.float32)
