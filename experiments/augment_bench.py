"""nwsjax.augment against the libraries that offer the same steps: dm-pix, jax.scipy, jax.image.

    nice -n 19 taskset -c 0 python experiments/augment_bench.py
    python experiments/augment_bench.py --batch 128 --members 8 --repeats 100

Needs dm-pix (``pip install -e '.[bench]'``). For every step of ``nwsjax.augment`` that a
library also offers, the hand-written version and the library's are applied to the same
batch with the same parameters (drawn by ``nwsjax.augment.sample_params`` with the
default ranges) and compared: largest absolute difference (exactness), fraction of values
off by more than 1e-6, and median time of the jitted function (speed), hand-written first.
Library steps that take one image are vmapped over the batch, as a library version of
``augment`` would have to; ours take the batch.

The hand-written warp is ``nwsjax.augment.apply_affine``, a 2x2-window gather
(:func:`gather_warp`). ``jax.scipy.ndimage.map_coordinates`` is faster on the warp
and equal to float32 rounding, but nwsjax keeps its gather: with the library sampler a
padded batch-norm member no longer tracked its single-model reference
(``tests/test_padding.py``; see nwsjax/augment.py). The hand-written colour steps are
nwsjax.augment's.

Batches: the first ``--batch`` training images of scikit-learn digits as nwsjax prepares
them (float32 [batch, 32, 32, 3] in [0, 1]); digits are grey (R = G = B), which every hue
and saturation change leaves alone, so the steps are also measured on "tinted" digits
(each image a random foreground and background colour, in [0, 1]) and the colour steps on
what they really receive in ``augment`` (tinted digits after warp, brightness and
contrast: values outside [0, 1], no clipping in between).

The trainer (``nwsjax.step.train_step``) augments one member's batch inside the jitted
training step, outside the differentiated loss (no gradient flows through augmentation,
so only forward passes are timed); a cohort maps it over members with ``lax.map`` on CPU
(the CPU default strategy) or ``vmap`` (accelerators). The whole pipeline is therefore
timed on one batch and under ``lax.map`` and ``vmap`` over ``--members`` batches.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from nwsjax import augment as aug
from nwsjax.data import load_dataset

try:
    import dm_pix as pix
except ImportError as error:  # pragma: no cover - a bench-only dependency
    raise SystemExit("dm-pix is needed: pip install -e '.[bench]' (or pip install dm-pix)") from error


# --- the library versions, built from library calls only ---------------------------------

DEFAULT = aug.AugmentConfig()


def pull_matrices(matrices: jax.Array, height: int, width: int) -> tuple[jax.Array, jax.Array]:
    """Our forward maps ``[batch, 2, 3]`` (centred x, y) as dm-pix's pull maps in (row, col, channel).

    Returns ``(matrix [batch, 3, 3], offset [batch, 3])``: the input index read by output
    index ``o`` is ``matrix @ o + offset``, the same point ``apply_affine`` reads (same
    inverse formula, so only the samplers differ).
    """
    a, b, tx = matrices[:, 0, 0], matrices[:, 0, 1], matrices[:, 0, 2]
    c, d, ty = matrices[:, 1, 0], matrices[:, 1, 1], matrices[:, 1, 2]
    det = a * d - b * c
    ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
    cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
    zero, one = jnp.zeros_like(a), jnp.ones_like(a)
    # In (y, x) order the inverse is [[id, ic], [ib, ia]].
    matrix = jnp.stack([jnp.stack([id_, ic, zero], -1),
                        jnp.stack([ib, ia, zero], -1),
                        jnp.stack([zero, zero, one], -1)], -2)
    oy = cy - (id_ * (cy + ty) + ic * (cx + tx))
    ox = cx - (ib * (cy + ty) + ia * (cx + tx))
    return matrix, jnp.stack([oy, ox, zero], -1)


def pix_warp(images, matrices, fill):
    """dm-pix ``affine_transform``, order 1, ``nearest`` (edge) or ``constant`` 0 (zero)."""
    matrix, offset = pull_matrices(matrices, images.shape[1], images.shape[2])
    mode = {"edge": "nearest", "zero": "constant"}[fill]
    return jax.vmap(lambda im, m, o: pix.affine_transform(im, m, offset=o, order=1, mode=mode))(
        images, matrix, offset)


def gather_warp(images, matrices, fill):
    """nwsjax's hand-written sampler (``nwsjax.augment.apply_affine``: one gather of 2x2
    windows), the baseline the library samplers are measured against."""
    return aug.apply_affine(images, matrices, fill)


def scipy_warp(images, matrices, fill, pad=False):
    """``jax.scipy.ndimage.map_coordinates`` (order 1) at our sample points, per image and channel.

    Zero fill is its ``constant`` mode, or with ``pad`` its ``nearest`` mode on the images
    with a one-pixel zero border (what ``apply_affine`` does).
    """
    sy, sx = aug.sample_points(matrices, images.shape[1], images.shape[2])
    mode = {"edge": "nearest", "zero": "constant"}[fill]
    if fill == "zero" and pad:
        images = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)))
        sy, sx, mode = sy + 1.0, sx + 1.0, "nearest"
    one_channel = lambda plane, y, x: jax.scipy.ndimage.map_coordinates(plane, [y, x], order=1, mode=mode)
    per_channel = jax.vmap(one_channel, in_axes=(2, None, None), out_axes=2)
    return jax.vmap(per_channel)(images, sy, sx)


def image_zoom_shift(images, zoom, translate):
    """``jax.image.scale_and_translate`` (linear, no antialias): zoom about the centre, then shift.

    Only zoom and translation (no rotation or shear). Its pixel centres are at i + 0.5, so
    our ``x' - c = zoom (x - c) + t`` (c = (w - 1) / 2) is ``u' = zoom u + w (1 - zoom) / 2 + t``.
    """
    _, height, width, channels = images.shape

    def one(image, z, t):
        scale = jnp.stack([z, z])
        shift = jnp.stack([height * (1 - z) / 2 + t[1], width * (1 - z) / 2 + t[0]])
        return jax.image.scale_and_translate(image, (height, width, channels), (0, 1), scale, shift,
                                             method="linear", antialias=False)

    return jax.vmap(one)(images, zoom, translate)


def pix_brightness(images, delta):
    return jax.vmap(pix.adjust_brightness)(images, delta)


def pix_contrast(images, factor):
    return jax.vmap(pix.adjust_contrast)(images, factor)


def pix_hue(images, hue):
    return jax.vmap(pix.adjust_hue)(images, hue)


def pix_saturation(images, saturation):
    return jax.vmap(pix.adjust_saturation)(images, saturation)


def pix_hue_then_saturation(images, hue, saturation):
    """Two dm-pix calls, as tf.image users chain them (two HSV round trips)."""
    return jax.vmap(lambda im, h, s: pix.adjust_saturation(pix.adjust_hue(im, h), s))(images, hue, saturation)


def pix_hsv_once(images, hue, saturation):
    """One HSV round trip with dm-pix's converters: hue turned, saturation scaled and clipped."""

    def one(image, h, s):
        hsv = pix.rgb_to_hsv(image)
        new_hue = jnp.mod(hsv[..., 0] + h, 1.0)
        new_saturation = jnp.clip(hsv[..., 1] * s, 0.0, 1.0)
        return pix.hsv_to_rgb(jnp.stack([new_hue, new_saturation, hsv[..., 2]], -1))

    return jax.vmap(one)(images, hue, saturation)


def library_augment(key, images, warp=pix_warp, config=DEFAULT):
    """``nwsjax.augment.augment`` with every step that a library offers done by the library.

    Same keys, same parameters, same order; the noise and the final clip are jax calls in
    both. The warp is ``warp`` (dm-pix ``affine_transform`` or jax.scipy
    ``map_coordinates``), the colour steps dm-pix's, with hue and saturation in one HSV
    round trip.
    """
    params_key, noise_key = jax.random.split(key)
    p = aug.sample_params(params_key, images.shape[0], config)
    x = warp(images, aug.affine_matrices(p.translate, p.rotate, p.zoom, p.shear), config.fill)
    x = pix_contrast(pix_brightness(x, p.brightness), p.contrast)
    x = pix_hsv_once(x, p.hue, p.saturation)
    x = aug.add_noise(noise_key, x, p.noise_std)
    return jnp.clip(x, 0.0, 1.0)


def gather_augment(key, images, config=DEFAULT, warp=gather_warp):
    """``nwsjax.augment.augment`` with its warp replaceable: :func:`gather_warp` (ours), our colour steps."""
    params_key, noise_key = jax.random.split(key)
    p = aug.sample_params(params_key, images.shape[0], config)
    x = warp(images, aug.affine_matrices(p.translate, p.rotate, p.zoom, p.shear), config.fill)
    x = aug.adjust_contrast(aug.adjust_brightness(x, p.brightness), p.contrast)
    x = aug.adjust_hue_saturation(x, p.hue, p.saturation)
    x = aug.add_noise(noise_key, x, p.noise_std)
    return jnp.clip(x, 0.0, 1.0)


# --- measuring ---------------------------------------------------------------------------


def time_pair(hand, lib, args, repeats):
    """Outputs and call times (ms) of two jitted functions, calls interleaved (fair under load)."""
    hand, lib = jax.jit(hand), jax.jit(lib)
    out_hand = jax.block_until_ready(hand(*args))
    out_lib = jax.block_until_ready(lib(*args))
    times = ([], [])
    for _ in range(repeats):
        for fn, record in zip((hand, lib), times):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            record.append((time.perf_counter() - start) * 1e3)
    return out_hand, out_lib, times


def row(name, hand, lib, args, repeats, rows, note=""):
    """Measures ``hand`` against ``lib`` on ``args``, appends a table row, returns |difference|."""
    out_hand, out_lib, (t_hand, t_lib) = time_pair(hand, lib, args, repeats)
    diff = np.abs(np.asarray(out_hand, np.float64) - np.asarray(out_lib, np.float64))
    rows.append({
        "op": name, "max_diff": float(diff.max()), "frac_1e6": float((diff > 1e-6).mean()),
        "hand": statistics.median(t_hand), "lib": statistics.median(t_lib),
        "ratio": statistics.median(t_hand) / statistics.median(t_lib),
        "ratio_min": min(t_hand) / min(t_lib), "note": note})
    return diff


def print_table(rows):
    print(f"{'operation':36s} {'max|diff|':>9s} {'>1e-6':>7s} {'hand ms':>8s} {'lib ms':>8s} "
          f"{'hand/lib':>8s} {'(min)':>6s}  library")
    for r in rows:
        print(f"{r['op']:36s} {r['max_diff']:9.2e} {r['frac_1e6']:7.2%} {r['hand']:8.3f} {r['lib']:8.3f} "
              f"{r['ratio']:8.2f} {r['ratio_min']:6.2f}  {r['note']}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="images per batch (default 64)")
    parser.add_argument("--members", type=int, default=4, help="batches under lax.map for the whole pipeline")
    parser.add_argument("--repeats", type=int, default=50, help="timed calls of each function")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"jax {jax.__version__}, dm-pix {pix.__version__}, {jax.default_backend()}, "
          f"{platform.processor() or platform.machine()}, load average {os.getloadavg()}, "
          f"cpus allowed {len(os.sched_getaffinity(0))}")
    data = load_dataset("digits")
    digits = jnp.asarray(data.train_images[: args.batch], jnp.float32) / 255.0
    assert bool(jnp.all(digits[..., 0] == digits[..., 1])), "digits are expected grey"
    rng = np.random.default_rng(args.seed)
    fg, bg = (rng.random((2, args.batch, 1, 1, 3), dtype=np.float32))
    tinted = jnp.asarray(bg + digits[..., :1] * (fg - bg))  # [batch, 32, 32, 3] in [0, 1]

    p = aug.sample_params(jax.random.key(args.seed), args.batch)
    matrices = aug.affine_matrices(p.translate, p.rotate, p.zoom, p.shear)
    # What the colour step receives in augment (values outside [0, 1]).
    colour_input = aug.adjust_contrast(aug.adjust_brightness(aug.apply_affine(tinted, matrices), p.brightness),
                                       p.contrast)
    print(f"colour-step input range in augment: [{float(colour_input.min()):.3f}, "
          f"{float(colour_input.max()):.3f}], {float(((colour_input < 0) | (colour_input > 1)).mean()):.1%} "
          f"of the values outside [0, 1]")

    r, rows = args.repeats, []
    for fill in ("edge", "zero"):
        hand = lambda x, m, f=fill: gather_warp(x, m, f)
        samplers = [("dm-pix affine_transform", lambda x, m, f=fill: pix_warp(x, m, f)),
                    ("jax.scipy map_coordinates", lambda x, m, f=fill: scipy_warp(x, m, f))]
        if fill == "zero":
            samplers.append(("jax.scipy map_coordinates, zero-padded",
                             lambda x, m: scipy_warp(x, m, "zero", pad=True)))
        for name, x in (("digits", digits), ("tinted", tinted)):
            for lib, fn in samplers:
                row(f"warp, {fill} fill, {name}", hand, fn, (x, matrices), r, rows, lib)
    no_turn = aug.affine_matrices(p.translate, jnp.zeros_like(p.rotate), p.zoom, jnp.zeros_like(p.shear))
    for name, x in (("digits", digits), ("tinted", tinted)):
        diff = row(f"zoom+shift only, edge fill, {name}", lambda x, m: gather_warp(x, m, "edge"),
                   lambda x, m: image_zoom_shift(x, p.zoom, p.translate), (x, no_turn), r, rows,
                   "jax.image.scale_and_translate")
        inner = diff[:, 4:-4, 4:-4]  # at least one pixel inside after a <= 3 px shift and 10% zoom
        print(f"zoom+shift vs jax.image, {name}: max |diff| {diff.max():.2e} overall, "
              f"{inner.max():.2e} more than 4 px from the border")
    row("brightness, digits", aug.adjust_brightness, pix_brightness, (digits, p.brightness), r, rows,
        "dm-pix adjust_brightness")
    row("contrast, digits", aug.adjust_contrast, pix_contrast, (digits, p.contrast), r, rows,
        "dm-pix adjust_contrast")
    ones, zeros = jnp.ones_like(p.saturation), jnp.zeros_like(p.hue)
    cases = (("tinted", tinted), ("augment's input", colour_input), ("digits", digits))
    for name, x in cases:
        row(f"hue only, {name}", lambda x, h: aug.adjust_hue_saturation(x, h, ones), pix_hue,
            (x, p.hue), r, rows, "dm-pix adjust_hue")
        row(f"saturation only, {name}", lambda x, s: aug.adjust_hue_saturation(x, zeros, s), pix_saturation,
            (x, p.saturation), r, rows, "dm-pix adjust_saturation")
        row(f"hue+saturation, {name}", aug.adjust_hue_saturation, pix_hue_then_saturation,
            (x, p.hue, p.saturation), r, rows, "dm-pix adjust_hue then adjust_saturation")
        diff = row(f"hue+saturation, {name}", aug.adjust_hue_saturation, pix_hsv_once,
                   (x, p.hue, p.saturation), r, rows, "dm-pix rgb_to_hsv, hsv_to_rgb")
        if name == "augment's input":
            inside = np.asarray(jnp.all((x >= 0) & (x <= 1), -1))
            print(f"hue+saturation vs dm-pix HSV on augment's input: max |diff| {diff.max():.2e}; "
                  f"{diff[inside].max():.2e} on the {inside.mean():.1%} pixels in [0, 1], "
                  f"{diff[~inside].max():.2e} on the others")

    scipy_library = lambda k, x: library_augment(k, x, warp=scipy_warp)
    variants = (("dm-pix warp + dm-pix colour", library_augment),
                ("jax.scipy warp + dm-pix colour", scipy_library),
                ("jax.scipy warp + our colour", lambda k, x: gather_augment(k, x, warp=scipy_warp)))
    for lib, fn in variants:
        row("whole augment, one batch, tinted", gather_augment, fn, (jax.random.key(1), tinted), r, rows, lib)
    with jax.disable_jit():
        eager = scipy_library(jax.random.key(1), tinted)
    jitted = jax.jit(scipy_library)(jax.random.key(1), tinted)
    bad = jnp.abs(jitted - eager) > 1e-3
    print(f"jax.scipy warp + dm-pix colour, jitted against eager: max |diff| "
          f"{float(jnp.abs(jitted - eager).max()):.2e}, {float(bad.mean()):.2%} of the values off by > 1e-3")
    keys = jax.random.split(jax.random.key(2), args.members)
    batches = jnp.stack([jnp.roll(tinted, m, axis=0) for m in range(args.members)])
    by_map = lambda fn: (lambda k, b: jax.lax.map(lambda kb: fn(*kb), (k, b)))
    for lib, fn in variants[1:]:
        row(f"whole augment, lax.map {args.members} members", by_map(gather_augment), by_map(fn),
            (keys, batches), max(r // 4, 5), rows, lib)
        row(f"whole augment, vmap {args.members} members", jax.vmap(gather_augment), jax.vmap(fn),
            (keys, batches), max(r // 4, 5), rows, lib)
    print_table(rows)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
