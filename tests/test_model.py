"""The NWS CNN family: layer shapes, parameter counts, flattening order, conv variants."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nwsjax.layout import count_weights
from nwsjax.model import (
    ACTIVATIONS,
    Architecture,
    NWSNet,
    conv_canonical,
    conv_xla,
    max_pool_2x2,
)


def shapes(arch, **kw):
    """Parameter shapes of ``arch`` (traced only: nothing is computed)."""
    init = lambda key: NWSNet(arch, **kw).init(  # noqa: E731
        {"params": key}, jnp.zeros((2, 32, 32, 3)), activation=0, initialization=2
    )
    return jax.tree.map(lambda x: x.shape, jax.eval_shape(init, jax.random.key(0))["params"])


def test_fixed_architecture_layers_and_about_92k_weights():
    params = shapes(Architecture())
    assert params["conv0"]["kernel"] == (5, 5, 3, 8)
    assert params["conv1"]["kernel"] == (5, 5, 8, 16)
    assert params["conv2"]["kernel"] == (5, 5, 16, 32)
    assert params["fc0"]["kernel"] == (4 * 4 * 32, 128)
    assert params["fc1"]["kernel"] == (128, 64)
    assert params["out"]["kernel"] == (64, 20)  # the reference's 20-wide output layer
    assert params["conv0_bn"]["scale"] == (8,)
    counts = count_weights(Architecture())  # the released length: moving statistics included
    assert counts == {"conv": 16880, "fc": 75988, "total": 92868}


@pytest.mark.parametrize(
    "arch, conv_layers, channels, fc_widths",
    [
        (Architecture(3, 4, 3, 4, 64), 4, (4, 8, 16, 16), (64, 32, 16)),
        (Architecture(7, 5, 4, 12, 192), 5, (12, 24, 24, 48, 48), (192, 96, 48, 24)),
        (Architecture(5, 3, 2, 8, 128, batch_norm=False), 3, (8, 16, 32), (128, 64)),
    ],
)
def test_depth_is_spread_over_blocks_from_the_last(arch, conv_layers, channels, fc_widths):
    params = shapes(arch)
    got = tuple(params[f"conv{i}"]["kernel"][-1] for i in range(conv_layers))
    assert got == channels and f"conv{conv_layers}" not in params
    assert params["conv0"]["kernel"][:2] == (arch.filter_size, arch.filter_size)
    assert tuple(params[f"fc{i}"]["kernel"][-1] for i in range(arch.depth_fc)) == fc_widths
    assert ("conv0_bn" in params) == arch.batch_norm
    total = sum(int(np.prod(s)) for s in jax.tree.leaves(params, is_leaf=lambda x: isinstance(x, tuple)))
    assert count_weights(arch, moving_stats=False)["total"] == total


def test_traced_activation_and_im2col_conv_match_the_plain_model():
    arch = Architecture(3, 3, 2, 4, 64)
    x = jax.random.uniform(jax.random.key(1), (4, 32, 32, 3))
    net = NWSNet(arch)
    variables = net.init({"params": jax.random.key(0)}, x, activation=0, initialization=3)
    apply_traced = jax.jit(lambda v, a: net.apply(v, x, activation=a))  # one program for every activation
    for index in range(len(ACTIVATIONS)):
        plain = net.apply(variables, x, activation=index)
        traced = apply_traced(variables, jnp.int32(index))
        np.testing.assert_allclose(traced, plain, rtol=1e-5, atol=1e-6)
        im2col = NWSNet(arch, conv_impl="im2col").apply(variables, x, activation=index)
        np.testing.assert_allclose(im2col, plain, rtol=1e-4, atol=1e-5)


def test_initializations_take_effect():
    arch = Architecture(3, 3, 2, 4, 64)
    kernels = []
    for init in range(4):
        v = NWSNet(arch).init({"params": jax.random.key(0)}, jnp.zeros((1, 32, 32, 3)), activation=0, initialization=init)
        kernels.append(np.asarray(v["params"]["fc0"]["kernel"]))
        assert np.all(np.asarray(v["params"]["fc0"]["bias"]) == 0)
    assert np.all(kernels[0] == np.float32(0.1))
    assert 0.9 < kernels[1].std() < 1.1
    assert kernels[2].std() < 0.2 and kernels[3].std() < 0.2
    assert not np.array_equal(kernels[2], kernels[3])


@pytest.mark.parametrize("size", [3, 5, 7])
def test_canonical_conv_gives_lax_conv_values_and_gradients_bitwise(size):
    """The trainer's convolution: same outputs and gradients as ``lax.conv`` and its autodiff."""
    x = jax.random.normal(jax.random.key(0), (4, 8, 8, 3))
    kernel = jax.random.normal(jax.random.key(1), (size, size, 3, 5))
    want, want_vjp = jax.vjp(conv_xla, x, kernel)
    got, got_vjp = jax.vjp(conv_canonical, x, kernel)
    dy = jax.random.normal(jax.random.key(2), want.shape)
    np.testing.assert_array_equal(got, want)
    for g, w in zip(got_vjp(dy), want_vjp(dy)):
        np.testing.assert_array_equal(g, w)


def test_max_pool_gradient_goes_to_the_first_maximum_like_flax():
    """Ties (zeros after ReLU) send the whole gradient to the first maximum of the window, as nn.max_pool does."""
    x = jnp.maximum(jnp.round(jax.random.normal(jax.random.key(0), (2, 8, 8, 3))), 0.0)
    pool = lambda v: nn.max_pool(v, (2, 2), strides=(2, 2))  # noqa: E731
    want, want_vjp = jax.vjp(pool, x)
    got, got_vjp = jax.vjp(max_pool_2x2, x)
    dy = jax.random.normal(jax.random.key(3), want.shape)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(got_vjp(dy)[0], want_vjp(dy)[0])
    window = jnp.zeros((1, 2, 2, 1))  # four equal values: the top-left one takes the gradient
    (grad,) = jax.vjp(max_pool_2x2, window)[1](jnp.ones((1, 1, 1, 1)))
    np.testing.assert_array_equal(grad.ravel(), [1.0, 0.0, 0.0, 0.0])
