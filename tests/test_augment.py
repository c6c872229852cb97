"""Tests of nwsjax.augment: the sampled pipeline and each piece with explicit parameters."""

import colorsys
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nwsjax import augment as aug
from nwsjax.augment import AugmentConfig, augment, sample_params
from nwsjax.errors import ConfigError

# Jitted once here: one compile per shape instead of one per eager op keeps the file fast.
jit_augment = jax.jit(augment, static_argnames="config")
add_noise = jax.jit(aug.add_noise)
adjust_brightness = jax.jit(aug.adjust_brightness)
adjust_contrast = jax.jit(aug.adjust_contrast)
adjust_hue_saturation = jax.jit(aug.adjust_hue_saturation)
affine_matrices = jax.jit(aug.affine_matrices)
apply_affine = jax.jit(aug.apply_affine, static_argnums=2)

# Every range zero (and factors 1): augment must give the input back.
NO_CHANGE = AugmentConfig(max_translate=0.0, max_rotate=0.0, max_zoom=0.0, max_shear=0.0,
                          max_brightness=0.0, contrast=(1.0, 1.0), max_hue=0.0,
                          saturation=(1.0, 1.0), max_noise_std=0.0)


def _images(batch=8, seed=0, size=32):
    """float32 [batch, size, size, 3] uniform in [0, 1]."""
    return np.random.default_rng(seed).random((batch, size, size, 3), dtype=np.float32)


def _matrices(batch, translate=(0.0, 0.0), rotate=0.0, zoom=1.0, shear=0.0):
    """The same forward affine map for every image of the batch: [batch, 2, 3]."""
    full = lambda v: np.full((batch,), v, np.float32)
    return affine_matrices(np.tile(np.asarray(translate, np.float32), (batch, 1)),
                           full(rotate), full(zoom), full(shear))


# --- the whole pipeline ------------------------------------------------------------------


def test_output_shape_dtype_and_range():
    x = _images(8)
    y = jit_augment(jax.random.key(0), x)
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert np.abs(np.asarray(y) - x).mean() > 0.01  # it did something


def test_same_key_same_output_bitwise_and_different_keys_differ():
    x = _images(8)
    a = jit_augment(jax.random.key(3), x)
    b = jit_augment(jax.random.key(3), x)
    c = jit_augment(jax.random.key(4), x)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert np.abs(np.asarray(a) - np.asarray(c)).max() > 0.05


def test_zero_ranges_give_the_input_back():
    x = _images(4)
    y = jit_augment(jax.random.key(0), x, config=NO_CHANGE)
    np.testing.assert_allclose(y, x, atol=1e-6)


def test_vmap_and_lax_map_match_single_calls():
    members = 3
    keys = jax.random.split(jax.random.key(7), members)
    batches = np.stack([_images(8, seed=s) for s in range(members)])
    by_vmap = jax.jit(jax.vmap(augment))(keys, batches)
    by_map = jax.jit(lambda k, b: jax.lax.map(lambda kb: augment(*kb), (k, b)))(keys, batches)
    for i in range(members):
        single = jit_augment(keys[i], batches[i])
        np.testing.assert_allclose(by_vmap[i], single, atol=1e-6, rtol=0)
        np.testing.assert_allclose(by_map[i], single, atol=1e-6, rtol=0)


def test_config_is_hashable_and_validated():
    assert hash(AugmentConfig()) == hash(AugmentConfig(contrast=[0.5, 1.5]))
    with pytest.raises(ConfigError):
        AugmentConfig(max_rotate=-1.0)
    with pytest.raises(ConfigError):
        AugmentConfig(contrast=(1.5, 0.5))
    with pytest.raises(ConfigError):
        AugmentConfig(max_zoom=1.0)
    with pytest.raises(ConfigError):
        AugmentConfig(fill="reflect")


# --- sampled parameters ------------------------------------------------------------------


def test_sampled_parameters_stay_in_range_and_cover_it():
    config = AugmentConfig()
    p = jax.jit(sample_params, static_argnums=(1, 2))(jax.random.key(1), 20000, config)
    ranges = {
        "translate": (-3.0, 3.0), "rotate": (-15.0, 15.0), "zoom": (0.9, 1.1),
        "shear": (-3.0, 3.0), "brightness": (-0.2, 0.2), "contrast": (0.5, 1.5),
        "hue": (-0.08, 0.08), "saturation": (0.3, 1.5),
    }
    for name, (low, high) in ranges.items():
        v = np.asarray(getattr(p, name))
        assert v.shape == ((20000, 2) if name == "translate" else (20000,)), name
        assert v.min() >= low and v.max() <= high, name
        span = high - low
        assert v.min() < low + 0.01 * span and v.max() > high - 0.01 * span, name
        assert abs(v.mean() - (low + high) / 2) < 0.02 * span, name
    stds = jax.jit(jax.vmap(lambda k: sample_params(k, 1, config).noise_std))(
        jax.random.split(jax.random.key(2), 2000))
    assert stds.shape == (2000,)
    assert float(stds.min()) >= 0.0 and float(stds.max()) <= 0.03
    assert float(stds.min()) < 0.001 and float(stds.max()) > 0.029


def test_per_image_parameters_are_independent():
    p = jax.jit(sample_params, static_argnums=1)(jax.random.key(5), 64)
    assert len(np.unique(np.asarray(p.rotate))) == 64
    assert abs(np.corrcoef(p.translate[:, 0], p.translate[:, 1])[0, 1]) < 0.4


# --- geometry ----------------------------------------------------------------------------


def test_affine_matrices_compose_zoom_shear_rotation():
    m = np.asarray(_matrices(1)[0])
    np.testing.assert_allclose(m, [[1, 0, 0], [0, 1, 0]], atol=1e-7)
    np.testing.assert_allclose(_matrices(1, rotate=90.0)[0], [[0, -1, 0], [1, 0, 0]], atol=1e-6)
    np.testing.assert_allclose(_matrices(1, shear=45.0)[0], [[1, 1, 0], [0, 1, 0]], atol=1e-6)
    np.testing.assert_allclose(_matrices(1, zoom=2.0, translate=(1.5, -2.0))[0],
                               [[2, 0, 1.5], [0, 2, -2.0]], atol=1e-7)
    t, z = np.tan(np.deg2rad(10.0)), 1.1
    c, s = np.cos(np.deg2rad(30.0)), np.sin(np.deg2rad(30.0))
    expected = np.array([[c, -s], [s, c]]) @ np.array([[1, t], [0, 1]]) * z
    np.testing.assert_allclose(_matrices(1, rotate=30.0, zoom=z, shear=10.0)[0, :, :2],
                               expected, atol=1e-6)


@pytest.mark.parametrize("fill", ["edge", "zero"])
def test_identity_affine_gives_the_input_back(fill):
    x = _images(4)
    np.testing.assert_allclose(apply_affine(x, _matrices(4), fill), x, atol=1e-6)


@pytest.mark.parametrize("fill", ["edge", "zero"])
def test_translation_by_one_pixel_moves_a_bright_pixel(fill):
    x = np.zeros((2, 32, 32, 3), np.float32)
    x[:, 10, 12] = 1.0
    right = np.asarray(apply_affine(x, _matrices(2, translate=(1.0, 0.0)), fill))
    down = np.asarray(apply_affine(x, _matrices(2, translate=(0.0, 1.0)), fill))
    expected_right = np.zeros_like(x)
    expected_right[:, 10, 13] = 1.0
    expected_down = np.zeros_like(x)
    expected_down[:, 11, 12] = 1.0
    np.testing.assert_allclose(right, expected_right, atol=1e-6)
    np.testing.assert_allclose(down, expected_down, atol=1e-6)


def test_half_pixel_translation_interpolates_bilinearly():
    x = np.zeros((1, 8, 8, 1), np.float32)
    x[0, 3, 3] = 1.0
    y = np.asarray(apply_affine(x, _matrices(1, translate=(0.5, 0.5))))[0, :, :, 0]
    expected = np.zeros((8, 8), np.float32)
    expected[3:5, 3:5] = 0.25
    np.testing.assert_allclose(y, expected, atol=1e-6)


def test_fill_modes_at_the_vacated_border():
    x = _images(2)
    shift = _matrices(2, translate=(2.0, 0.0))
    edge = np.asarray(apply_affine(x, shift, "edge"))
    zero = np.asarray(apply_affine(x, shift, "zero"))
    np.testing.assert_allclose(edge[:, :, 2:], x[:, :, :-2], atol=1e-6)
    np.testing.assert_allclose(zero[:, :, 2:], x[:, :, :-2], atol=1e-6)
    np.testing.assert_allclose(edge[:, :, 0], x[:, :, 0], atol=1e-6)
    np.testing.assert_allclose(edge[:, :, 1], x[:, :, 0], atol=1e-6)
    np.testing.assert_array_equal(zero[:, :, :2], 0.0)


def test_rotation_by_90_degrees_turns_the_image_clockwise():
    x = _images(2, size=32)
    y = np.asarray(apply_affine(x, _matrices(2, rotate=90.0)))
    np.testing.assert_allclose(y, np.rot90(x, k=-1, axes=(1, 2)), atol=1e-5)
    # An odd size has a pixel at the centre, which stays.
    x = _images(1, size=9)
    y = np.asarray(apply_affine(x, _matrices(1, rotate=-90.0)))
    np.testing.assert_allclose(y, np.rot90(x, k=1, axes=(1, 2)), atol=1e-5)


def test_zoom_by_two_about_the_centre():
    x = np.zeros((1, 9, 9, 1), np.float32)
    x[0, 5, 4] = 1.0  # one pixel below the centre (4, 4)
    y = np.asarray(apply_affine(x, _matrices(1, zoom=2.0), "zero"))[0, :, :, 0]
    # Output (row 6, col 4) reads input row 5; rows 5 and 7 read 4.5 and 5.5.
    assert y[6, 4] == pytest.approx(1.0)
    assert y[5, 4] == pytest.approx(0.5) and y[7, 4] == pytest.approx(0.5)
    assert y[4, 4] == pytest.approx(0.0)


# --- photometry --------------------------------------------------------------------------


def test_brightness_and_contrast_on_known_values():
    x = np.zeros((2, 2, 1, 3), np.float32)
    x[:, 0] = [0.2, 0.4, 0.0]
    x[:, 1] = [0.6, 0.4, 1.0]  # channel means 0.4, 0.4, 0.5
    bright = adjust_brightness(x, np.float32([0.1, -0.2]))
    np.testing.assert_allclose(bright[0], x[0] + 0.1, atol=1e-7)
    np.testing.assert_allclose(bright[1], x[1] - 0.2, atol=1e-7)
    contrast = np.asarray(adjust_contrast(x, np.float32([0.5, 2.0])))
    np.testing.assert_allclose(contrast[0, :, 0], [[0.3, 0.4, 0.25], [0.5, 0.4, 0.75]], atol=1e-6)
    np.testing.assert_allclose(contrast[1, :, 0], [[0.0, 0.4, -0.5], [0.8, 0.4, 1.5]], atol=1e-6)


def _hsv_reference(rgb, hue, saturation):
    """colorsys: shift hue by ``hue`` turns, scale saturation (clipped to 1)."""
    h, s, v = colorsys.rgb_to_hsv(*rgb)
    return colorsys.hsv_to_rgb((h + hue) % 1.0, min(s * saturation, 1.0), v)


def test_hue_saturation_match_colorsys():
    rng = np.random.default_rng(0)
    x = rng.random((6, 5, 5, 3), dtype=np.float32)
    hue = np.array([0.0, 0.08, -0.08, 1 / 3, 0.5, -0.3], np.float32)
    sat = np.array([1.0, 0.3, 1.5, 1.0, 0.0, 1.2], np.float32)
    y = np.asarray(adjust_hue_saturation(x, hue, sat))
    expected = np.array([[[_hsv_reference(p, hue[i], sat[i]) for p in row] for row in x[i]]
                         for i in range(len(x))], np.float32)
    np.testing.assert_allclose(y, expected, atol=2e-6)


def test_hue_zero_is_identity_and_one_third_turns_red_to_green():
    x = _images(2)
    unchanged = adjust_hue_saturation(x, np.zeros(2, np.float32), np.ones(2, np.float32))
    np.testing.assert_allclose(unchanged, x, atol=1e-6)
    colours = np.array([[[[1, 0, 0], [0, 1, 0], [0, 0, 1]]]], np.float32)  # red, green, blue
    shifted = adjust_hue_saturation(colours, np.float32([1 / 3]), np.ones(1, np.float32))
    np.testing.assert_allclose(shifted[0, 0], [[0, 1, 0], [0, 0, 1], [1, 0, 0]], atol=1e-6)


def test_saturation_on_known_values():
    # (0.8, 0.4, 0.2): V 0.8, chroma 0.6, S 0.75, hue 20 degrees.
    x = np.array([[[[0.8, 0.4, 0.2]]]], np.float32).repeat(3, axis=0)
    y = adjust_hue_saturation(x, np.zeros(3, np.float32), np.float32([0.0, 0.5, 2.0]))
    y = np.asarray(y)[:, 0, 0]
    np.testing.assert_allclose(y[0], [0.8, 0.8, 0.8], atol=1e-6)  # no saturation: grey at V
    np.testing.assert_allclose(y[1], [0.8, 0.6, 0.5], atol=1e-6)  # S 0.375, chroma 0.3
    np.testing.assert_allclose(y[2], [0.8, 0.2 / 0.6 * 0.8, 0.0], atol=1e-6)  # S clipped to 1


def test_hue_saturation_leave_grey_images_unchanged():
    grey = np.repeat(_images(4)[..., :1], 3, axis=-1)
    y = adjust_hue_saturation(grey, np.float32([0.08, -0.08, 0.3, 0.5]),
                              np.float32([0.3, 1.5, 0.0, 1.0]))
    np.testing.assert_array_equal(np.asarray(y), grey)


def test_noise_has_the_requested_std():
    zeros = np.zeros((64, 32, 32, 3), np.float32)
    n = np.asarray(add_noise(jax.random.key(0), zeros, np.float32(0.5)))
    assert abs(n.mean()) < 0.01 and abs(n.std() - 0.5) < 0.01
    np.testing.assert_array_equal(add_noise(jax.random.key(0), zeros, np.float32(0.0)), zeros)


def test_photometric_pipeline_on_a_grey_batch_keeps_it_grey():
    # Geometry, brightness, contrast and noise-free photometry keep R = G = B.
    config = dataclasses.replace(AugmentConfig(), max_noise_std=0.0)
    grey = np.repeat(_images(8)[..., :1], 3, axis=-1)
    y = np.asarray(jit_augment(jax.random.key(9), grey, config=config))
    np.testing.assert_allclose(y[..., 0], y[..., 1], atol=1e-6)
    np.testing.assert_allclose(y[..., 0], y[..., 2], atol=1e-6)
