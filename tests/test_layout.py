"""The NWS flattening order (nwsjax.layout) against the released layout, written out by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nwsjax.layout import count_weights, flatten, layout, moving_stats_of, unflatten
from nwsjax.model import Architecture, NWSNet

SMALL = Architecture(3, 3, 2, 4, 64)


def released_length(arch: Architecture, moving_stats: bool = True) -> int:
    """The reference's count: k*k*c_in*c_out + c_out + 4*c_out per conv layer, n_in*n_out + n_out
    + 4*n_out per dense layer (2 per unit without the moving statistics), 20*n_in + 20 for the output."""
    norm = (4 if moving_stats else 2) * arch.batch_norm
    n, c_in = 0, 3
    for c_out in [c for block in arch.conv_channels for c in block]:
        n += arch.filter_size**2 * c_in * c_out + c_out + norm * c_out
        c_in = c_out
    n_in = 4 * 4 * c_in
    for n_out in arch.fc_widths:
        n += n_in * n_out + n_out + norm * n_out
        n_in = n_out
    return n + arch.num_classes * n_in + arch.num_classes


def test_fixed_architecture_has_the_released_length():
    fixed = Architecture()  # filter 5, conv depth 3, FC depth 2, widths 8 and 128, batch norm, 20 outputs
    assert released_length(fixed) == count_weights(fixed)["total"] == 92_868
    assert count_weights(fixed, moving_stats=False)["total"] == 92_372
    ten = Architecture(num_classes=10)
    assert count_weights(ten)["total"] == 92_218 and count_weights(ten, moving_stats=False)["total"] == 91_722
    for arch in (SMALL, Architecture(7, 5, 4, 12, 192), Architecture(5, 4, 3, 8, 64, batch_norm=False)):
        for stats in (True, False):
            assert count_weights(arch, stats)["total"] == released_length(arch, stats)


def tree_and_vector(arch: Architecture, rng: np.random.Generator, lead=()):
    """Random params and batch_stats of ``arch``, and the released vector built by hand from them."""
    params, stats, pieces = {}, {}, []
    channels = [c for block in arch.conv_channels for c in block]
    shapes, c_in = [], 3
    for i, c in enumerate(channels):
        shapes.append((f"conv{i}", (arch.filter_size, arch.filter_size, c_in, c)))
        c_in = c
    n_in = 4 * 4 * c_in
    for i, n in enumerate(arch.fc_widths):
        shapes.append((f"fc{i}", (n_in, n)))
        n_in = n
    shapes.append(("out", (n_in, arch.num_classes)))
    for name, shape in shapes:
        kernel, bias = rng.normal(size=(*lead, *shape)), rng.normal(size=(*lead, shape[-1]))
        params[name] = {"kernel": kernel, "bias": bias}
        # unit-major: for each output unit, for each input channel, the k x k taps row by row
        unit_major = np.moveaxis(kernel, -1, len(lead))
        if len(shape) == 4:
            unit_major = np.moveaxis(unit_major, -1, len(lead) + 1)
        pieces += [unit_major.reshape(*lead, -1), bias]
        if arch.batch_norm and name != "out":
            beta, gamma, mean, var = rng.normal(size=(4, *lead, shape[-1]))
            params[f"{name}_bn"] = {"bias": beta, "scale": gamma}
            stats[f"{name}_bn"] = {"mean": mean, "var": var}
            pieces += [beta, gamma, mean, var]
    return params, stats, np.concatenate(pieces, axis=-1)


@pytest.mark.parametrize("arch", [SMALL, Architecture(3, 4, 3, 4, 64, num_classes=10),
                                  Architecture(3, 3, 2, 4, 64, batch_norm=False)])
def test_flatten_gives_the_released_order_and_unflatten_inverts_it(arch):
    params, stats, vector = tree_and_vector(arch, np.random.default_rng(0))
    np.testing.assert_array_equal(flatten(params, arch, stats), vector)
    back_params, back_stats = unflatten(vector, arch)
    assert jax.tree.all(jax.tree.map(np.array_equal, back_params, params))
    if arch.batch_norm:
        assert jax.tree.all(jax.tree.map(np.array_equal, back_stats, stats))
    else:
        assert back_stats == {}
    for segment in layout(arch):  # each segment holds its array (kernels unit-major)
        tree = stats if segment.collection == "batch_stats" else params
        leaf = tree[segment.path[0]][segment.path[1]]
        got = back_params if segment.collection == "params" else back_stats
        np.testing.assert_array_equal(got[segment.path[0]][segment.path[1]], leaf)
    stacked = tree_and_vector(arch, np.random.default_rng(1), lead=(2,))
    np.testing.assert_array_equal(flatten(stacked[0], arch, stacked[1]), stacked[2])
    assert jnp.allclose(flatten(jax.tree.map(jnp.asarray, params), arch, stats), vector)


def test_without_moving_statistics_the_vector_drops_only_them():
    params, stats, full = tree_and_vector(SMALL, np.random.default_rng(2))
    short = flatten(params, SMALL, None)
    kept = np.concatenate([np.arange(s.offset, s.offset + s.size) for s in layout(SMALL) if s.collection == "params"])
    np.testing.assert_array_equal(short, full[kept])
    assert [s.path for s in layout(SMALL, moving_stats=False)] == [s.path for s in layout(SMALL) if s.collection == "params"]
    assert moving_stats_of(SMALL, len(full)) and not moving_stats_of(SMALL, len(short))
    back, none = unflatten(short, SMALL)
    assert none is None and jax.tree.all(jax.tree.map(np.array_equal, back, params))
    with pytest.raises(ValueError, match="with moving statistics"):
        unflatten(full[:-1], SMALL)


def test_segments_mark_the_layers_in_reference_order():
    segments = layout(SMALL)
    assert [s.path for s in segments[:6]] == [
        ("conv0", "kernel"), ("conv0", "bias"), ("conv0_bn", "bias"), ("conv0_bn", "scale"),
        ("conv0_bn", "mean"), ("conv0_bn", "var")]
    assert [s.path for s in segments[-8:]] == [
        ("fc1", "kernel"), ("fc1", "bias"), ("fc1_bn", "bias"), ("fc1_bn", "scale"), ("fc1_bn", "mean"),
        ("fc1_bn", "var"), ("out", "kernel"), ("out", "bias")]
    assert all(b.offset == a.offset + a.size for a, b in zip(segments, segments[1:]))
    conv = count_weights(SMALL)["conv"]
    assert all((s.part == "conv") == (s.offset < conv) for s in segments)
    assert next(s for s in segments if s.path == ("conv1", "kernel")).offset == 3 * 3 * 3 * 4 + 4 * 5


@pytest.mark.parametrize("arch", [SMALL, Architecture(3, 5, 2, 4, 64, batch_norm=False)])
def test_layout_names_and_shapes_are_those_of_the_model(arch):
    init = lambda key: NWSNet(arch).init({"params": key}, jnp.zeros((2, 32, 32, 3)), activation=0)  # noqa: E731
    variables = jax.eval_shape(init, jax.random.key(0))
    for segment in layout(arch):
        leaf = variables[segment.collection][segment.path[0]][segment.path[1]]
        assert leaf.shape == segment.shape, segment.path
    leaves = jax.tree.leaves({c: variables.get(c, {}) for c in ("params", "batch_stats")})
    assert sum(int(np.prod(x.shape)) for x in leaves) == count_weights(arch)["total"]
