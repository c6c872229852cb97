"""Data augmentation of the NWS reference as one pure JAX function.

``augment(key, images)`` draws, independently per image, a geometric transform
(translation, rotation, zoom, shear) applied as one affine map with one
bilinear resampling, then photometric changes (brightness, contrast, hue,
saturation), adds Gaussian noise with one standard deviation per batch, and
clips to [0, 1]. Everything is traced: no Python-side randomness and no
data-dependent shapes, so the function runs unchanged inside ``jax.jit``,
``jax.vmap`` (one key and one batch per member) and ``jax.lax.map``.

The pieces are public so they can be used (and tested) with explicit
parameters: :func:`sample_params` draws an :class:`AugmentParams`,
:func:`affine_matrices` turns it into affine maps, :func:`apply_affine`
resamples, and :func:`adjust_brightness`, :func:`adjust_contrast`,
:func:`adjust_hue_saturation` and :func:`add_noise` do the rest.

Conventions: images are float32 ``[batch, height, width, channels]`` (RGB for
the colour steps), pixel ``(x, y)`` is column ``x``, row ``y`` (y points down),
and geometric maps act on pixel coordinates measured from the image centre
``((width - 1) / 2, (height - 1) / 2)``.

Choices where the reference gives only ranges: zoom is one factor for both
axes, uniform in [0.9, 1.1]; shear slants x along y; the warp replicates edge
pixels (``AugmentConfig.fill="zero"`` reads zeros instead); hue and saturation
are changed in HSV like ``tf.image.adjust_hue`` / ``adjust_saturation``, so
grey images are left alone; the order is warp, brightness, contrast,
hue/saturation, noise, clip, with no clipping in between.

Libraries, measured against these steps by ``experiments/augment_bench.py``
(BENCHMARKS.md; one loaded CPU core, 64 digits, jitted, forward only since no
gradient flows through augmentation); every step stays ours:

* the warp: ``jax.scipy.ndimage.map_coordinates`` at our sample points gives the
  same images to float32 rounding (1.2e-7) and is 1.5x faster on the warp alone
  (1.15-1.25x on the whole augmentation), but with it a padded batch-norm member
  no longer tracked its single-model reference (``tests/test_padding.py``: 82% of
  predictions agreed, the test asks 90%; it passes with our gather). dm-pix's
  ``affine_transform`` is 33x slower and its ``constant`` mode is another fill;
  ``jax.image.scale_and_translate`` cannot rotate or shear.
* brightness and contrast: dm-pix gives the same bits in the same time, not worth
  a dependency (dm-pix, chex, toolz) for an addition and a mean.
* hue and saturation: dm-pix's agree to 8e-7 but take 0.52 ms against 0.38, and
  jitted into one program with the warp they went wrong (4.6% of the values off by
  up to 0.87 from the same code run eagerly: their ``value == channel`` tests
  compare numbers XLA computed in different fusions).
"""

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from nwsjax.errors import ConfigError

__all__ = [
    "AugmentConfig",
    "AugmentParams",
    "augment",
    "sample_params",
    "affine_matrices",
    "apply_affine",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue_saturation",
    "add_noise",
]

_FILL_MODES = ("edge", "zero")


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the augmentation; the defaults are the NWS reference's.

    Hashable, so it can be a static argument of ``jax.jit``.

    Attributes:
      max_translate: translation in x and in y, uniform in +-this, pixels.
      max_rotate: rotation, uniform in +-this, degrees.
      max_zoom: scale factor uniform in [1 - this, 1 + this] (one factor for
        both axes; above 1 enlarges the content).
      max_shear: shear angle (x sheared along y), uniform in +-this, degrees.
      max_brightness: delta added to every channel, uniform in +-this.
      contrast: contrast factor range [low, high] about the per-image
        per-channel mean.
      max_hue: hue shift, uniform in +-this, as a fraction of the hue circle.
      saturation: saturation factor range [low, high].
      max_noise_std: the noise standard deviation, one per batch, is uniform
        in [0, this].
      fill: what the resampling reads outside the image: ``"edge"`` repeats the
        border pixels, ``"zero"`` reads zeros.
    """

    max_translate: float = 3.0
    max_rotate: float = 15.0
    max_zoom: float = 0.1
    max_shear: float = 3.0
    max_brightness: float = 0.2
    contrast: tuple[float, float] = (0.5, 1.5)
    max_hue: float = 0.08
    saturation: tuple[float, float] = (0.3, 1.5)
    max_noise_std: float = 0.03
    fill: str = "edge"

    def __post_init__(self):
        for name in ("max_translate", "max_rotate", "max_zoom", "max_shear",
                     "max_brightness", "max_hue", "max_noise_std"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value >= 0):
                raise ConfigError(f"AugmentConfig.{name} must be a number >= 0, got {value!r}")
        if not self.max_zoom < 1:
            raise ConfigError(f"AugmentConfig.max_zoom must be < 1 (a zoom factor "
                              f"of 1 - max_zoom must stay positive), got {self.max_zoom!r}")
        if not self.max_shear < 90:
            raise ConfigError(f"AugmentConfig.max_shear must be < 90 degrees, "
                              f"got {self.max_shear!r}")
        for name in ("contrast", "saturation"):
            try:
                low, high = (float(v) for v in getattr(self, name))
            except (TypeError, ValueError):
                low, high = math.nan, math.nan
            if not 0 <= low <= high:
                raise ConfigError(f"AugmentConfig.{name} must be a range (low, high) "
                                  f"with 0 <= low <= high, got {getattr(self, name)!r}")
            object.__setattr__(self, name, (low, high))  # a tuple keeps the config hashable
        if self.fill not in _FILL_MODES:
            raise ConfigError(f"AugmentConfig.fill must be one of {_FILL_MODES}, "
                              f"got {self.fill!r}")


class AugmentParams(NamedTuple):
    """Explicit augmentation parameters of one batch (a pytree of arrays).

    Attributes:
      translate: float32 ``[batch, 2]``, shift (x, y) in pixels.
      rotate: float32 ``[batch]``, degrees; positive turns the content
        clockwise as displayed (y down).
      zoom: float32 ``[batch]``, scale factor (1 = unchanged).
      shear: float32 ``[batch]``, degrees; ``x' = x + tan(shear) * y``.
      brightness: float32 ``[batch]``, delta added.
      contrast: float32 ``[batch]``, factor.
      hue: float32 ``[batch]``, shift in fractions of the hue circle.
      saturation: float32 ``[batch]``, factor.
      noise_std: float32 ``[]``, one standard deviation for the whole batch.
    """

    translate: jax.Array
    rotate: jax.Array
    zoom: jax.Array
    shear: jax.Array
    brightness: jax.Array
    contrast: jax.Array
    hue: jax.Array
    saturation: jax.Array
    noise_std: jax.Array


def sample_params(key: jax.Array, batch: int, config: AugmentConfig = AugmentConfig()) -> AugmentParams:
    """Draws the parameters of ``batch`` images, uniformly in ``config``'s ranges.

    Args:
      key: a PRNG key.
      batch: number of images (static).
      config: the ranges.

    Returns:
      :class:`AugmentParams` with ``[batch]`` (translate ``[batch, 2]``) arrays
      and a scalar ``noise_std``.
    """
    per_image_key, noise_key = jax.random.split(key)
    # One draw for every per-image quantity: columns are tx, ty, rotate, zoom,
    # shear, brightness, contrast, hue, saturation.
    low = jnp.array([-config.max_translate, -config.max_translate, -config.max_rotate,
                     1.0 - config.max_zoom, -config.max_shear, -config.max_brightness,
                     config.contrast[0], -config.max_hue, config.saturation[0]], jnp.float32)
    high = jnp.array([config.max_translate, config.max_translate, config.max_rotate,
                      1.0 + config.max_zoom, config.max_shear, config.max_brightness,
                      config.contrast[1], config.max_hue, config.saturation[1]], jnp.float32)
    u = jax.random.uniform(per_image_key, (batch, low.shape[0]), jnp.float32)
    v = low + u * (high - low)
    noise_std = jax.random.uniform(noise_key, (), jnp.float32) * config.max_noise_std
    return AugmentParams(translate=v[:, 0:2], rotate=v[:, 2], zoom=v[:, 3], shear=v[:, 4],
                         brightness=v[:, 5], contrast=v[:, 6], hue=v[:, 7],
                         saturation=v[:, 8], noise_std=noise_std)


def affine_matrices(translate: jax.Array, rotate: jax.Array, zoom: jax.Array,
                    shear: jax.Array) -> jax.Array:
    """Composes translation, rotation, zoom and shear into forward affine maps.

    The map sends a point ``p`` of the input (centred pixel coordinates, see the
    module docstring) to ``R(rotate) @ S(shear) @ (zoom * p) + translate`` in the
    output: zoom first, then shear, then rotation about the centre, then shift.

    Args:
      translate: ``[batch, 2]`` pixels (x, y).
      rotate: ``[batch]`` degrees, positive turns clockwise as displayed.
      zoom: ``[batch]`` scale factors.
      shear: ``[batch]`` degrees, ``x' = x + tan(shear) * y``.

    Returns:
      float32 ``[batch, 2, 3]``: ``[[a, b, tx], [c, d, ty]]`` per image.
    """
    theta = jnp.deg2rad(rotate)
    cos, sin = jnp.cos(theta), jnp.sin(theta)
    tan_shear = jnp.tan(jnp.deg2rad(shear))
    # R @ [[1, t], [0, 1]] * z
    a = cos * zoom
    b = (cos * tan_shear - sin) * zoom
    c = sin * zoom
    d = (sin * tan_shear + cos) * zoom
    rows = jnp.stack([jnp.stack([a, b, translate[:, 0]], -1),
                      jnp.stack([c, d, translate[:, 1]], -1)], -2)
    return rows.astype(jnp.float32)


def sample_points(matrices: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
    """Where :func:`apply_affine` reads: ``(sy, sx)``, float32 ``[batch, height, width]``.

    Output pixel ``q`` reads the input at ``A^-1 (q - t)`` in centred coordinates.
    """
    a, b, tx = matrices[:, 0, 0], matrices[:, 0, 1], matrices[:, 0, 2]
    c, d, ty = matrices[:, 1, 0], matrices[:, 1, 1], matrices[:, 1, 2]
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    # Output pixel grid, centred, minus the translation: [batch, height, width].
    qx = jnp.arange(width, dtype=jnp.float32)[None, None, :] - cx - tx[:, None, None]
    qy = jnp.arange(height, dtype=jnp.float32)[None, :, None] - cy - ty[:, None, None]
    sx = ia[:, None, None] * qx + ib[:, None, None] * qy + cx
    sy = ic[:, None, None] * qx + id_[:, None, None] * qy + cy
    return sy, sx


def apply_affine(images: jax.Array, matrices: jax.Array, fill: str = "edge") -> jax.Array:
    """Warps each image by its forward affine map with one bilinear resampling.

    Every output pixel ``q`` reads the input at ``A^-1 (q - t)`` (centred
    coordinates) and interpolates its 2x2 neighbourhood, which one gather of
    2x2 windows fetches for the whole batch.

    Args:
      images: float32 ``[batch, height, width, channels]``, height, width >= 2.
      matrices: ``[batch, 2, 3]`` invertible forward maps as from
        :func:`affine_matrices`.
      fill: ``"edge"`` replicates the border pixels outside the image, ``"zero"``
        reads zeros there (static).

    Returns:
      float32 ``[batch, height, width, channels]``.
    """
    if fill not in _FILL_MODES:
        raise ConfigError(f"fill must be one of {_FILL_MODES}, got {fill!r}")
    batch, height, width, channels = images.shape
    sy, sx = sample_points(matrices, height, width)
    if fill == "zero":
        # A one-pixel zero border; clamping into it reads zeros beyond the edge.
        images = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
        sx, sy = sx + 1.0, sy + 1.0
        height, width = height + 2, width + 2
    sx = jnp.clip(sx, 0.0, width - 1.0)
    sy = jnp.clip(sy, 0.0, height - 1.0)
    # The window's top-left corner stays inside, so the 2x2 window always fits;
    # at the last row/column the weight of the far neighbour is then 1.
    x0 = jnp.minimum(jnp.floor(sx), width - 2.0)
    y0 = jnp.minimum(jnp.floor(sy), height - 2.0)
    wx = (sx - x0)[..., None]
    wy = (sy - y0)[..., None]
    starts = jnp.stack([y0.astype(jnp.int32), x0.astype(jnp.int32)], -1)
    windows = jax.lax.gather(
        images, starts,
        jax.lax.GatherDimensionNumbers(
            offset_dims=(3, 4, 5), collapsed_slice_dims=(), start_index_map=(1, 2),
            operand_batching_dims=(0,), start_indices_batching_dims=(0,)),
        slice_sizes=(1, 2, 2, channels),
        mode=jax.lax.GatherScatterMode.CLIP)  # free here; keeps NaN coordinates in bounds
    # windows: [batch, height_out, width_out, 2 (dy), 2 (dx), channels].
    top = windows[..., 0, 0, :] + wx * (windows[..., 0, 1, :] - windows[..., 0, 0, :])
    bottom = windows[..., 1, 0, :] + wx * (windows[..., 1, 1, :] - windows[..., 1, 0, :])
    return top + wy * (bottom - top)


def adjust_brightness(images: jax.Array, delta: jax.Array) -> jax.Array:
    """Adds ``delta`` ``[batch]`` to every pixel of ``images`` ``[batch, h, w, c]``."""
    return images + delta[:, None, None, None]


def adjust_contrast(images: jax.Array, factor: jax.Array) -> jax.Array:
    """Scales each image about its per-channel mean, like ``tf.image.adjust_contrast``.

    Args:
      images: float32 ``[batch, height, width, channels]``.
      factor: ``[batch]``.

    Returns:
      ``(images - mean) * factor + mean``, mean over height and width.
    """
    mean = jnp.mean(images, axis=(1, 2), keepdims=True)
    return (images - mean) * factor[:, None, None, None] + mean


def adjust_hue_saturation(images: jax.Array, hue: jax.Array, saturation: jax.Array) -> jax.Array:
    """Shifts hue and scales saturation in HSV, like ``tf.image.adjust_hue`` / ``_saturation``.

    RGB is taken to HSV (hexcone model), hue is turned by ``hue`` of a full
    circle, saturation is multiplied by ``saturation`` and clipped to [0, 1],
    and the result taken back to RGB, in one pass. Working with chroma
    ``max - min`` instead of ``S = chroma / V`` avoids dividing by V and keeps
    values outside [0, 1] (before the final clip) well defined. Grey pixels
    (R = G = B) have no chroma and come back bit for bit.

    Args:
      images: float32 ``[batch, height, width, 3]`` RGB.
      hue: ``[batch]`` fractions of the hue circle (1/3 turns red to green).
      saturation: ``[batch]`` factors.

    Returns:
      float32 ``[batch, height, width, 3]``.
    """
    r, g, b = images[..., 0], images[..., 1], images[..., 2]
    value = jnp.maximum(jnp.maximum(r, g), b)
    chroma = value - jnp.minimum(jnp.minimum(r, g), b)
    # Hue in sextants [0, 6): 0 red, 2 green, 4 blue. The largest channel is picked by
    # comparing channels, not by ``value == channel``: XLA may compute ``value`` and a
    # channel in different fusions, and an exact equality between them is fragile.
    is_r, is_g = (r >= g) & (r >= b), g >= b
    numerator = jnp.where(is_r, g - b, jnp.where(is_g, b - r, r - g))
    base = jnp.where(is_r, 0.0, jnp.where(is_g, 2.0, 4.0))
    sextant = base + numerator / jnp.where(chroma > 0, chroma, 1.0) + 6.0 * hue[:, None, None]
    sextant = sextant - 6.0 * jnp.floor(sextant * (1.0 / 6.0))
    chroma = jnp.clip(chroma * saturation[:, None, None], 0.0, jnp.maximum(value, 0.0))
    # Channel n (5 for R, 3 for G, 1 for B) is value - chroma * clip(min(k, 4 - k), 0, 1)
    # with k = (n + sextant) mod 6.
    channels = []
    for n in (5.0, 3.0, 1.0):
        k = sextant + n
        k = jnp.where(k >= 6.0, k - 6.0, k)
        channels.append(value - chroma * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0))
    return jnp.stack(channels, -1)


def add_noise(key: jax.Array, images: jax.Array, std: jax.Array) -> jax.Array:
    """Adds independent Gaussian noise of one standard deviation ``std`` (scalar) to ``images``."""
    # Drawn flat: threefry over a 1-D shape is about twice as fast on CPU.
    noise = jax.random.normal(key, (images.size,), jnp.float32).reshape(images.shape)
    return images + std * noise


def augment(key: jax.Array, images: jax.Array, config: AugmentConfig = AugmentConfig()) -> jax.Array:
    """Augments one batch as the NWS reference does; pure, jit/vmap/lax.map safe.

    Per image: one affine warp (translation, rotation, zoom, shear; one bilinear
    resampling, border as ``config.fill``, edge replication by default), then
    brightness, contrast, and hue with saturation (HSV); then Gaussian noise of
    one standard deviation per batch; then clipping to [0, 1].

    The same key gives the same output bit for bit (same program, same
    machine). ``jax.vmap(augment)(keys, batches)[i]`` and ``jax.lax.map`` agree
    with ``augment(keys[i], batches[i])`` to float rounding (a few 1e-7: XLA
    fuses the batched program differently), not bit for bit.

    Args:
      key: a PRNG key (one per batch; under vmap, one per member).
      images: float32 ``[batch, 32, 32, 3]`` in [0, 1] (any height, width >= 2).
      config: ranges; static (pass it with ``static_argnames`` if jitting
        ``augment`` directly with a non-default config).

    Returns:
      float32 ``[batch, height, width, 3]`` in [0, 1].
    """
    images = jnp.asarray(images, jnp.float32)
    params_key, noise_key = jax.random.split(key)
    p = sample_params(params_key, images.shape[0], config)
    x = apply_affine(images, affine_matrices(p.translate, p.rotate, p.zoom, p.shear), config.fill)
    x = adjust_contrast(adjust_brightness(x, p.brightness), p.contrast)
    x = adjust_hue_saturation(x, p.hue, p.saturation)
    x = add_noise(noise_key, x, p.noise_std)
    return jnp.clip(x, 0.0, 1.0)
