"""Tests of nwsjax.meta: reading, splits, balance, slices, streaming memory, models, metrics.

Zoos here are written directly with ``ZooWriter.add_member`` from vectors made up for
each test (hand-computable values, or a label planted in the weights), so nothing is
trained on images.
"""

from __future__ import annotations

import tracemalloc

import jax
import numpy as np
import pytest

from nwsjax.errors import ConfigError, ZooError
from nwsjax.layout import count_weights, flatten, layout, unflatten
from nwsjax.meta import data as D
from nwsjax.meta import train as T
from nwsjax.meta.models import (
    DMC,
    UNIT_FEATURES,
    UNIT_SPREAD,
    UNIT_VALUES,
    UnitSet,
    dmc_plan,
    statistic_names,
    unit_count,
    unit_spread,
    unit_spread_names,
    unit_tokens,
    weight_statistics,
)
from nwsjax.meta.reader import WeightReader
from nwsjax.model import Architecture
from nwsjax.zoo import WeightSource, Zoo, ZooWriter, open_zoo

SMALL = Architecture(3, 3, 2, 4, 64)  # 21,260 values (released layout), 1,688 in the conv part
DEEPER = Architecture(3, 3, 3, 4, 64)  # another length and one more layer, for mixed zoos
OPTIMIZERS = ("adam", "rmsprop", "momentum")


# --------------------------------------------------------------------------- #
# Zoos written directly
# --------------------------------------------------------------------------- #


def write_zoo(path, specs, vectors, k, *, members_per_part=16):
    """Writes a zoo.

    Args:
      specs: one dict per member: ``arch`` and any member-table values to override.
      vectors: ``(member, arch) -> float32 [k, n_weights]`` flat NWS vectors.
    """
    writer = ZooWriter(path, {"train": {"snapshots": k}}, members_per_part=members_per_part)
    for member, spec in enumerate(specs):
        spec = dict(spec)
        arch = spec.pop("arch")
        counts = count_weights(arch)
        record = dict(
            member=member, dataset="digits", lrate=0.001, batch_size=64, batch_norm="on", augmentation="off",
            optimizer="adam", activation="relu", initialization="glorot_uniform", filter_size=arch.filter_size,
            depth_conv=arch.depth_conv, depth_fc=arch.depth_fc, width_conv=arch.width_conv, width_fc=arch.width_fc,
            seed=member, architecture=arch.label(), cohort=arch.label(), weightn_conv=counts["conv"],
            weightn_fc=counts["fc"], status="finished", test_acc=0.9, epochs=k, snapshot_exports=list(range(1, k + 1)),
        )
        record.update(spec)
        # test accuracy after epoch e (export e + 1): 0.1 * e + member / 1000
        curves = [{"member": member, "epoch": e, "test_acc": 0.1 * e + member / 1000} for e in range(1, k)]
        params, stats = unflatten(np.asarray(vectors(member, arch), np.float32), arch)
        writer.add_member(arch.label(), arch, record, (params, stats), curves)
    writer.wait()
    writer.close()
    return open_zoo(path)


def coded(member, arch, k=3):
    """Vector whose every value tells (member, snapshot, index): exact in float32."""
    n = count_weights(arch)["total"]
    return np.stack([(member * k + s) * 65536.0 + np.arange(n) for s in range(k)]).astype(np.float32)


def decode(value, k=3):
    code, index = divmod(int(value), 65536)
    member, snapshot0 = divmod(code, k)
    return member, snapshot0 + 1, index


@pytest.fixture(scope="module")
def mixed_zoo(tmp_path_factory):
    """10 networks of two lengths, 3 snapshots, coded values; optimizer cycles over 3 classes."""
    specs = [{"arch": SMALL if i % 2 else DEEPER, "optimizer": OPTIMIZERS[i % 3]} for i in range(10)]
    return write_zoo(tmp_path_factory.mktemp("mixed"), specs, coded, 3, members_per_part=3)


def planted(member, arch, k=3):
    """The optimizer class (member % 3) sets the spread of the weights."""
    rng = np.random.default_rng(member)
    n = count_weights(arch)["total"]
    return (rng.standard_normal((k, n)) * 4.0 ** (member % 3 - 1)).astype(np.float32)


def planted_lrate(member, arch, k=3):
    """The learning rate sets the mean of the weights."""
    rng = np.random.default_rng(member)
    n = count_weights(arch)["total"]
    return (rng.standard_normal((k, n)) + 400 * (_lrate(member) - 0.0025)).astype(np.float32)


def _lrate(member):
    return 0.0002 + 0.0048 * ((member * 7) % 30) / 29


@pytest.fixture(scope="module")
def planted_zoo(tmp_path_factory):
    """60 networks of one architecture, the optimizer planted in the weights."""
    specs = [{"arch": SMALL, "optimizer": OPTIMIZERS[i % 3]} for i in range(60)]
    return write_zoo(tmp_path_factory.mktemp("planted"), specs, planted, 3)


@pytest.fixture(scope="module")
def lrate_zoo(tmp_path_factory):
    """60 networks of one architecture, the learning rate planted in the weights."""
    specs = [{"arch": SMALL, "lrate": _lrate(i)} for i in range(60)]
    return write_zoo(tmp_path_factory.mktemp("lrate"), specs, planted_lrate, 3)


# --------------------------------------------------------------------------- #
# Reader
# --------------------------------------------------------------------------- #


def test_reader_matches_zoo_flat_and_caches_within_budget(mixed_zoo):
    ids = mixed_zoo.members.index.to_numpy()
    members, snapshots = np.repeat(ids, 3), np.tile([1, 2, 3], len(ids))
    n = count_weights(SMALL)["total"] * 4
    reader = WeightReader(mixed_zoo, cache_bytes=2 * n)
    got = {i: v.copy() for i, v in reader.read(members, snapshots)}
    assert sorted(got) == list(range(len(members)))
    for i in (0, 7, len(members) - 1):
        np.testing.assert_array_equal(got[i], mixed_zoo.flat([int(members[i])], int(snapshots[i]))[0])
        assert decode(got[i][5]) == (members[i], snapshots[i], 5)
    assert reader.cached_bytes <= 2 * n and reader.counters["reads"] == len(members)
    again = dict(reader.read(members, snapshots))
    assert reader.counters["hits"] == len(reader._cache) and len(again) == len(members)


def test_reader_reports_missing_part(tmp_path):
    specs = [{"arch": SMALL}]
    zoo = write_zoo(tmp_path / "z", specs, coded, 3)
    import shutil

    shutil.rmtree(zoo.path / zoo.members["part"].iloc[0])
    with pytest.raises(ZooError, match="incomplete"):
        list(WeightReader(zoo).read([0], [1]))


def test_read_rows_is_the_seam_under_params_and_flat(mixed_zoo):
    """``Zoo.read_rows``: the rows asked for (any order, repeats) of one snapshot, as params() and flat() see them."""
    assert isinstance(mixed_zoo, WeightSource)
    members = mixed_zoo.members
    part = members["part"].iloc[0]
    mine = members.index[members["part"] == part].to_numpy()  # members_per_part=3: one architecture
    rows = members.loc[mine, "row"].to_numpy()
    order = [2, 0, 2, 1]
    got = mixed_zoo.read_rows(part, rows[order], 2)
    assert set(got) == {"params", "batch_stats"}
    want = mixed_zoo.params(mine[order], snapshot=2)
    for layer, leaves in want.items():
        for name, value in leaves.items():
            np.testing.assert_array_equal(got["params"][layer][name], value)
    np.testing.assert_array_equal(flatten(got["params"], mixed_zoo.architecture(int(mine[0])), got["batch_stats"]),
                                  mixed_zoo.flat(mine[order], snapshot=2))
    assert [decode(v[7]) for v in mixed_zoo.flat(mine[order], snapshot=2)] == [(m, 2, 7) for m in mine[order]]
    np.testing.assert_array_equal(got["batch_stats"]["conv0_bn"]["var"], mixed_zoo.batch_stats(mine[order], 2)["conv0_bn"]["var"])
    assert list(mixed_zoo.read_rows(part, rows[:1], 1, ("params",))) == ["params"]
    with pytest.raises(ZooError, match="snapshots 1..3"):
        mixed_zoo.read_rows(part, rows, 4)


# --------------------------------------------------------------------------- #
# Targets, splits, balance
# --------------------------------------------------------------------------- #


def test_targets_resolve_and_reject(mixed_zoo):
    targets, skipped = D.resolve_targets("all", mixed_zoo)
    names = [t.name for t in targets]
    assert names == ["lrate", "optimizer", "depth_fc", "test_acc"]  # every other property has one class here
    assert "activation" in skipped and "batch_norm" in skipped
    optimizer = targets[1]
    assert optimizer.classes == OPTIMIZERS and optimizer.num_outputs == 3
    with pytest.raises(ConfigError, match="unknown target 'colour'"):
        D.resolve_targets("colour", mixed_zoo)
    with pytest.raises(ConfigError, match="one class"):
        D.resolve_targets("activation", mixed_zoo)
    bare = Zoo(mixed_zoo.path, mixed_zoo.info, mixed_zoo.members.drop(columns="snapshot_exports"))
    assert "test_acc" in D.resolve_targets("all", bare)[1]
    with pytest.raises(ConfigError, match="test_acc: the zoo has no per-epoch curves"):
        D.resolve_targets("test_acc", bare)


def test_split_is_by_network_seeded_and_target_independent():
    ids = np.arange(100, 400)
    split = D.split_networks(ids, seed=3)
    sides = [set(s.tolist()) for s in split.sides().values()]
    assert sides[0].isdisjoint(sides[1]) and sides[0].isdisjoint(sides[2]) and sides[1].isdisjoint(sides[2])
    assert set().union(*sides) == set(ids.tolist())
    assert len(split.test) == 60 and len(split.val) == 24
    again = D.split_networks(ids, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(split.sides().values(), again.sides().values()))
    assert not np.array_equal(split.test, D.split_networks(ids, seed=4).test)


def test_samples_never_put_one_network_on_two_sides(mixed_zoo):
    target = D.resolve_targets("optimizer", mixed_zoo)[0][0]
    split = D.split_networks(mixed_zoo.members.index, seed=0, test_fraction=0.3, val_fraction=0.0)
    samples = D.make_samples(mixed_zoo, target, split, (2, 3), seed=0)
    train, test = set(samples["train"].member.tolist()), set(samples["test"].member.tolist())
    assert train.isdisjoint(test)
    for s in samples.values():  # every kept network with both snapshots
        for member in np.unique(s.member):
            assert sorted(s.snapshot[s.member == member].tolist()) == [2, 3]


def test_balance_keeps_the_rarest_count_per_class():
    labels = np.array([0] * 10 + [1] * 4 + [2] * 7)
    ids = np.arange(len(labels)) + 50
    kept = D.balance(ids, labels, 3, np.random.default_rng(0))
    assert np.bincount(labels[kept - 50], minlength=3).tolist() == [4, 4, 4]
    assert len(set(kept.tolist())) == 12
    assert len(D.balance(ids, labels, 4, np.random.default_rng(0))) == 0  # a class with no network


def test_make_samples_balances_and_labels(planted_zoo):
    target = D.resolve_targets("optimizer", planted_zoo)[0][0]
    split = D.split_networks(planted_zoo.members.index, seed=1)
    samples = D.make_samples(planted_zoo, target, split, (3,), seed=0)
    for side, s in samples.items():
        counts = np.bincount(s.y, minlength=3)
        assert counts.min() == counts.max() > 0, side
        truth = [OPTIMIZERS.index(planted_zoo.members.loc[m, "optimizer"]) for m in s.member]
        assert s.y.tolist() == truth


def test_regression_targets_labels(mixed_zoo):
    targets = {t.name: t for t in D.resolve_targets("lrate,test_acc", mixed_zoo)[0]}
    split = D.split_networks(mixed_zoo.members.index, seed=0)
    lrate = D.make_samples(mixed_zoo, targets["lrate"], split, (1, 2, 3), seed=0)
    assert np.allclose(lrate["train"].y, 0.001)
    acc = D.make_samples(mixed_zoo, targets["test_acc"], split, (1, 2, 3), seed=0)
    train = acc["train"]
    assert set(train.snapshot.tolist()) == {2, 3}  # the initialization has no test accuracy
    np.testing.assert_allclose(train.y, 0.1 * (train.snapshot - 1) + train.member / 1000, rtol=1e-6)


def test_parse_snapshots():
    assert D.parse_snapshots("11-20", 20) == tuple(range(11, 21))
    assert D.parse_snapshots(None, 20) == tuple(range(11, 21))
    assert D.parse_snapshots("1,5,9", 10) == (1, 5, 9)
    assert D.parse_snapshots("3", 5) == (3,)
    for bad in ("0-3", "4-6", "21", "x", "5-2"):
        with pytest.raises(ConfigError, match="--snapshots"):
            D.parse_snapshots(bad, 5)


# --------------------------------------------------------------------------- #
# Slices
# --------------------------------------------------------------------------- #


def test_slice_bounds_by_part():
    lo, hi = D.slice_bounds([100, 40], [1000, 500], "whole", 30)
    assert lo.tolist() == [0, 0] and hi.tolist() == [970, 470]
    lo, hi = D.slice_bounds([100, 40], [1000, 500], "conv", 30)
    assert lo.tolist() == [0, 0] and hi.tolist() == [70, 10]
    lo, hi = D.slice_bounds([100, 40], [1000, 500], "fc", 30)
    assert lo.tolist() == [100, 40] and hi.tolist() == [970, 470]


def test_draw_and_even_starts_are_inside_bounds():
    lo, hi = np.array([0, 5, 100]), np.array([10, 5, 200])
    starts = D.draw_starts(np.random.default_rng(0), lo, hi, 1000)
    assert starts.shape == (3, 1000)
    assert (starts >= lo[:, None]).all() and (starts <= hi[:, None]).all()
    assert starts[0].min() == 0 and starts[0].max() == 10  # both ends reachable
    even = D.even_starts(lo, hi, 5)
    assert even.tolist() == [[0, 2, 5, 8, 10], [5] * 5, [100, 125, 150, 175, 200]]


@pytest.mark.parametrize("part", ["whole", "conv", "fc"])
def test_stream_slices_match_hand_computed_vectors(mixed_zoo, part):
    """Mixed lengths; every slice equals vector[start:start + L] of the right network and snapshot."""
    ids = mixed_zoo.members.index.to_numpy()
    samples = D.Samples(np.repeat(ids, 3), np.tile([1, 2, 3], len(ids)), np.zeros(3 * len(ids), np.int32))
    length = 300
    stream = D.SliceStream(mixed_zoo, WeightReader(mixed_zoo), samples, D.SliceSpec(length, part, 2),
                           batch_size=4, buffer_bytes=6 * 2 * length * 4)  # windows of 6 samples
    seen = []
    for batch in stream.train_epoch(np.random.default_rng(0)):
        assert batch.x.shape == (4, 2, length)
        for row, index in enumerate(batch.index):
            member, snapshot = samples.member[index], samples.snapshot[index]
            n_conv = count_weights(mixed_zoo.architecture(int(member)))["conv"]
            n = count_weights(mixed_zoo.architecture(int(member)))["total"]
            for s in range(2):
                got = batch.x[row, s]
                m, snap, start = decode(got[0])
                assert (m, snap) == (member, snapshot)
                np.testing.assert_array_equal(got, coded(member, mixed_zoo.architecture(int(member)))[snapshot - 1, start : start + length])
                lo, end = {"whole": (0, n), "conv": (0, n_conv), "fc": (n_conv, n)}[part]
                assert lo <= start and start + length <= end
                expected = (start - lo) / (end - length - lo)
                assert batch.position[row, s] == pytest.approx(expected, abs=1e-6)
            seen.append(index)
    assert len(seen) == len(samples) // 4 * 4 and len(set(seen)) == len(seen)


def test_batches_do_not_depend_on_the_cache(mixed_zoo):
    """Cold reads into the shuffle buffer and warm batch-by-batch cuts give the same batches."""
    ids = mixed_zoo.members.index.to_numpy()
    samples = D.Samples(np.repeat(ids, 2), np.tile([1, 3], len(ids)), np.zeros(2 * len(ids), np.int32))
    streams = [D.SliceStream(mixed_zoo, WeightReader(mixed_zoo, cache_bytes=budget), samples, D.SliceSpec(64, "fc", 2),
                             batch_size=3, buffer_bytes=7 * 2 * 64 * 4) for budget in (0, 1 << 30)]
    for epoch in range(2):  # the second epoch of the cached stream is served from the cache
        got = [list(s.train_epoch(np.random.default_rng(epoch))) for s in streams]
        assert len(got[0]) == len(got[1]) == len(samples) // 3
        for a, b in zip(*got):
            np.testing.assert_array_equal(a.x, b.x)
            np.testing.assert_array_equal(a.index, b.index)
            np.testing.assert_array_equal(a.position, b.position)
    assert streams[1].reader.counters["hits"] > 0 and streams[0].reader.counters["hits"] == 0


def test_random_starts_follow_the_numpy_reference(mixed_zoo):
    """The pipeline's starts are draw_starts over the window in its shuffled order (a numpy reference)."""
    ids = mixed_zoo.members.index.to_numpy()
    samples = D.Samples(ids, np.full(len(ids), 2), np.zeros(len(ids), np.int32))
    stream = D.SliceStream(mixed_zoo, WeightReader(mixed_zoo), samples, D.SliceSpec(100, "whole", 1), batch_size=10)
    batch = next(stream.train_epoch(np.random.default_rng(5)))
    rng = np.random.default_rng(5)
    order = stream._part_order(rng)
    window = rng.permutation(order)
    n = np.array([count_weights(mixed_zoo.architecture(int(m)))["total"] for m in ids])
    starts = D.draw_starts(rng, np.zeros(len(ids)), n[window] - 100, 1)[:, 0]
    assert batch.index.tolist() == window.tolist()
    assert [decode(x[0, 0])[2] for x in batch.x] == starts.tolist()


def test_slice_longer_than_the_shortest_network_is_one_line_error(mixed_zoo):
    n_small = count_weights(SMALL)["total"]
    with pytest.raises(ConfigError, match=rf"longer than the vector of network 1 \({n_small} weights\)"):
        D.check_length(mixed_zoo, mixed_zoo.members.index.to_numpy(), D.SliceSpec(n_small + 1))
    with pytest.raises(ConfigError, match="conv part"):
        D.check_length(mixed_zoo, mixed_zoo.members.index.to_numpy(), D.SliceSpec(5000, "conv"))
    with pytest.raises(ConfigError, match="one length"):
        D.check_length(mixed_zoo, mixed_zoo.members.index.to_numpy(), D.SliceSpec(None))


def test_eval_batches_cover_every_sample_once_with_padding(mixed_zoo):
    ids = mixed_zoo.members.index.to_numpy()
    samples = D.Samples(ids, np.full(len(ids), 1), np.arange(len(ids), dtype=np.int32))
    stream = D.SliceStream(mixed_zoo, WeightReader(mixed_zoo), samples, D.SliceSpec(50, "whole", 3), batch_size=4)
    seen = []
    for batch in stream.eval_batches(lambda w: D.even_starts(stream.lo[w], stream.hi[w], 3)):
        for row, index in enumerate(batch.index):
            if index < 0:
                continue
            seen.append(index)
            starts = [decode(batch.x[row, s, 0])[2] for s in range(3)]
            assert starts == D.even_starts(stream.lo[[index]], stream.hi[[index]], 3)[0].tolist()
    assert sorted(seen) == list(range(len(ids)))


# --------------------------------------------------------------------------- #
# Memory of the streaming pipeline
# --------------------------------------------------------------------------- #


def test_streaming_memory_does_not_grow_with_snapshots(tmp_path):
    """300 networks: peak numpy memory of an epoch is bounded by buffer + cache + one part, whatever the snapshot count."""
    k, n = 4, count_weights(SMALL)["total"]
    rng = np.random.default_rng(0)
    zoo = write_zoo(tmp_path / "z", [{"arch": SMALL}] * 300, lambda m, a: rng.standard_normal((k, n)), k)
    length, batch, window = 512, 16, 64
    cache = 4 << 20

    def peak(snapshots):
        reader = WeightReader(zoo, cache_bytes=cache, chunk_cache_bytes=8 << 20)
        ids = zoo.members.index.to_numpy()
        samples = D.Samples(np.repeat(ids, len(snapshots)), np.tile(snapshots, len(ids)), np.zeros(len(ids) * len(snapshots), np.int32))
        stream = D.SliceStream(zoo, reader, samples, D.SliceSpec(length), batch_size=batch, buffer_bytes=window * length * 4)
        tracemalloc.start()
        count = sum(1 for _ in D.prefetch(stream.train_epoch(np.random.default_rng(0))))
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert count == len(samples) // batch
        assert reader.cached_bytes <= cache
        return top

    def one_read():
        reader = WeightReader(zoo, cache_bytes=0)
        tracemalloc.start()
        list(reader.read([0], [1]))
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    peak([1])  # warm-up: one-time allocations of the libraries are not the stream's
    one, four = peak([1]), peak([1, 2, 3, 4])
    part = 16 * n * 4  # the rows of one part at one snapshot
    # bound: the vector cache, two shuffle windows, a batch or two, and two part reads (one
    # read measured alone: a part's rows plus Orbax's own fixed cost, which varies with the
    # process's history)
    bound = cache + 2 * window * length * 4 + 4 * batch * length * 4 + 2 * max(one_read(), 3 * part) + (1 << 20)
    assert four < bound, (four, bound)
    assert four < 1.25 * one + (1 << 20), (one, four)
    all_vectors = 300 * k * n * 4
    assert four < all_vectors / 8


# --------------------------------------------------------------------------- #
# Models
# --------------------------------------------------------------------------- #


def test_dmc_plan_follows_the_reference():
    small = dmc_plan(5000, deep=False)
    assert [c for c, _ in small] == [8, 16, 32, 64, 128, 256] + [256] * 6
    assert sum(p for _, p in small) == 8  # 5000 -> 2500 -> 1250 -> 625 -> 312 -> 156 -> 78 -> 39 -> 19
    deep = dmc_plan(92000, deep=True)
    assert len(deep) == 15 and sum(p for _, p in deep) == 12


def test_weight_statistics_by_layer():
    n = count_weights(SMALL)["total"]
    vector = np.arange(n, dtype=np.float32)
    stats = dict(zip(statistic_names(SMALL), weight_statistics(vector, SMALL)))
    assert len(stats) == len(weight_statistics(vector, SMALL))
    first = layout(SMALL)[0]
    assert stats["conv0/kernel:mean"] == pytest.approx((first.size - 1) / 2)
    assert stats["conv0/kernel:max"] == first.size - 1
    assert stats["fc:min"] == count_weights(SMALL)["conv"]
    conv_only = statistic_names(SMALL, "conv")
    assert len(weight_statistics(vector, SMALL, "conv")) == len(conv_only)
    assert all(not name.startswith("fc") for name in conv_only)


def test_unit_tokens_by_hand():
    n = count_weights(SMALL)["total"]
    vector = np.arange(n, dtype=np.float32)
    tokens, layers = unit_tokens(vector, SMALL)
    assert tokens.shape == (unit_count(SMALL), UNIT_FEATURES) == (4 + 8 + 16 + 64 + 32 + 20, 29)
    assert layers.tolist() == [0] * 4 + [1] * 8 + [2] * 16 + [3] * 64 + [4] * 32 + [5] * 20
    # conv0: 4 units of 3 x 3 x 3 = 27 incoming weights, then 4 biases, 4 BN offsets (beta), 4 scales
    # (gamma), 4 moving means, 4 moving variances
    for u in range(4):
        mean, std, low, q10, q50, q90, high, mean_abs, bias, scale, offset, moving_mean, moving_var = tokens[u, :13]
        assert (low, high, mean, q50) == (27 * u, 27 * u + 26, 27 * u + 13, 27 * u + 13)
        assert (bias, offset, scale, moving_mean, moving_var) == (108 + u, 112 + u, 116 + u, 120 + u, 124 + u)
        assert std == pytest.approx(np.arange(27).std())
    assert tokens[0, -3:].tolist() == [0, 1, 0] and tokens[-1, -3:].tolist() == [1, 0, 1]
    fc_tokens, fc_layers = unit_tokens(vector, SMALL, "fc")
    assert len(fc_tokens) == unit_count(SMALL, "fc") == 116 and fc_layers[0] == 0
    np.testing.assert_array_equal(fc_tokens[:, :26], tokens[28:, :26])
    # a vector without the moving statistics (nwsjax zoos before the released layout): mean 0, variance 1
    short = layout(SMALL, moving_stats=False)
    bare, _ = unit_tokens(np.arange(sum(seg.size for seg in short), dtype=np.float32), short)
    assert bare.shape == tokens.shape and bare[:4, 11:13].tolist() == [[0, 1]] * 4
    assert bare[:4, 8:11].tolist() == [[108 + u, 116 + u, 112 + u] for u in range(4)]  # same units, depth relative to the part


def test_units_model_subsamples_units_only_while_training():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 30, UNIT_FEATURES)).astype(np.float32)
    layer = np.tile(np.repeat(np.arange(3), 10), (4, 1)).astype(np.float32)
    layer[:, -4:] = -1  # padding
    sub, full = UnitSet(3, width=16, dropout=0.0, keep=0.5), UnitSet(3, width=16, dropout=0.0, keep=1.0)
    variables = full.init(jax.random.key(0), x, layer)

    def train(module, key):
        return module.apply(variables, x, layer, train=True, rngs={"dropout": jax.random.key(key)})

    assert not np.allclose(train(sub, 1), train(sub, 2))  # a different subset of units per pass
    np.testing.assert_array_equal(train(full, 1), train(full, 2))
    # evaluation reads every unit: the same function as the model that never subsamples
    np.testing.assert_array_equal(sub.apply(variables, x, layer), full.apply(variables, x, layer))


def test_unit_stream_pads_mixed_architectures(mixed_zoo):
    ids = mixed_zoo.members.index.to_numpy()
    samples = D.Samples(ids, np.full(len(ids), 2), np.zeros(len(ids), np.int32))
    stream = D.UnitStream(mixed_zoo, WeightReader(mixed_zoo), samples, "whole", batch_size=4)
    assert stream.length == unit_count(DEEPER) > unit_count(SMALL)
    batch = next(stream.train_epoch(np.random.default_rng(0)))
    assert batch.x.shape == (4, stream.length, UNIT_FEATURES)
    for row, index in enumerate(batch.index):
        units = unit_count(mixed_zoo.architecture(int(ids[index])))
        assert (batch.position[row, :units] >= 0).all() and (batch.position[row, units:] == -1).all()
    model = UnitSet(3, width=8)
    variables = jax.jit(model.init)(jax.random.key(0), batch.x, batch.position)
    padded = batch.x.copy()
    padded[batch.position < 0] = 1e3  # padding must not matter
    apply = jax.jit(model.apply)
    np.testing.assert_allclose(apply(variables, batch.x, batch.position), apply(variables, padded, batch.position), rtol=1e-5)


def test_unit_tokens_are_cached_without_changing_batches(mixed_zoo):
    """Tokens come from the token cache after the first epoch; batches are the same whatever its budget."""
    ids = mixed_zoo.members.index.to_numpy()
    samples = D.Samples(np.repeat(ids, 2), np.tile([1, 3], len(ids)), np.zeros(2 * len(ids), np.int32))
    one = unit_count(DEEPER) * (UNIT_FEATURES + 1) * 4  # bytes of one sample's tokens and layer numbers, at most
    streams = [D.UnitStream(mixed_zoo, WeightReader(mixed_zoo, cache_bytes=0), samples, "whole", batch_size=3,
                            buffer_bytes=1 << 20, token_cache_bytes=budget) for budget in (0, 5 * one, 1 << 30)]
    for epoch in range(2):
        got = [list(s.train_epoch(np.random.default_rng(epoch))) for s in streams]
        for batches in got[1:]:
            assert len(batches) == len(got[0]) == len(samples) // 3
            for a, b in zip(got[0], batches):
                np.testing.assert_array_equal(a.x, b.x)
                np.testing.assert_array_equal(a.position, b.position)
                np.testing.assert_array_equal(a.index, b.index)
    reads = [s.reader.counters["reads"] for s in streams]
    assert reads[0] == 2 * len(samples) and reads[2] == len(samples)  # no cache: read twice; all cached: once
    assert len(samples) < reads[1] < 2 * len(samples) and streams[1].cached_bytes <= 5 * one


def _fit_and_test(zoo, model, target_name, length, epochs=3, lrate=3e-3, part="whole", **options):
    target = D.resolve_targets(target_name, zoo)[0][0]
    split = D.split_networks(zoo.members.index, seed=0, test_fraction=0.25, val_fraction=0.0)
    samples = D.make_samples(zoo, target, split, (1, 2, 3), seed=0)
    reader = WeightReader(zoo)
    # set model sizes as the CLI test's, so a whole test run compiles them once
    opts = T.ModelOptions(**{"dmc_width": 0.25, "dmc_dropout": 0.0, "set_slices": 2, **options})
    settings = T.TrainSettings(epochs=epochs, batch_size=16, lrate=lrate, decays=1, progress=False)
    spec = T.slice_spec(model, length, part, opts)
    stream = T.make_stream(model, zoo, reader, samples["train"], spec, batch_size=16, buffer_bytes=1 << 26)
    fitted = T.fit(T.build_model(model, target.num_outputs, opts), target, stream, settings, seed=0)
    test = T.eval_stream(zoo, reader, samples["test"], spec, settings, count=1, model=model)
    single = T.metrics(target, T.predict(fitted, test, T.random_starts(test, 0)), samples["test"])
    return target, samples, fitted, single, stream


CONV = count_weights(SMALL)["conv"]  # the dmc test's slice length: the global test then reuses its compiled programs


@pytest.mark.parametrize("model, length, epochs", [("dmc", CONV, 10), ("set", 128, 6), ("units", None, 6)])
def test_models_learn_a_planted_class(planted_zoo, model, length, epochs):
    target, samples, fitted, single, stream = _fit_and_test(planted_zoo, model, "optimizer", length, epochs)
    assert fitted.steps == epochs * (len(samples["train"]) // 16)
    assert fitted.history[-1]["loss"] < fitted.history[0]["loss"]
    assert single["accuracy"] > 0.6, single  # chance 1/3
    if model == "dmc":  # 4 slices per test network, normalized together: the vote and the per-slice number
        ensemble = T.eval_stream(planted_zoo, stream.reader, samples["test"], stream.spec, T.TrainSettings(), count=4)
        outputs = T.predict(fitted, ensemble, T.evenly(ensemble), per_slice=True)
        assert outputs.shape == (len(samples["test"]), 4, 3)
        np.testing.assert_allclose(outputs.sum(-1), 1, atol=1e-5)
        # (the planted class is the scale of a whole network, which batch norm over one network's
        # slices divides away: these numbers sit near chance, unlike the single-slice one)
        correct = (outputs.argmax(-1) == samples["test"].y[:, None]).mean(1)
        by_network = [correct[samples["test"].member == m].mean() for m in np.unique(samples["test"].member)]
        assert T.slice_metrics(target, outputs, samples["test"])["accuracy"] == pytest.approx(np.mean(by_network))


def test_global_model_reads_the_whole_part(planted_zoo):
    target, samples, fitted, single, stream = _fit_and_test(planted_zoo, "global", "optimizer", None, epochs=6, part="conv")
    assert isinstance(fitted.module, DMC)
    assert stream.length == CONV and (stream.lo == 0).all() and (stream.hi == 0).all()
    assert fitted.history[-1]["loss"] < fitted.history[0]["loss"]
    assert single["accuracy"] > 0.5, single


def test_regression_learns_a_planted_learning_rate(lrate_zoo):
    target, samples, fitted, single, stream = _fit_and_test(lrate_zoo, "set", "lrate", 128, epochs=8)
    assert target.kind == "regression"
    chance = T.metrics(target, np.full(len(samples["test"]), np.median(samples["train"].y), np.float32), samples["test"])
    assert single["mae"] < 0.6 * chance["mae"], (single, chance)
    assert single["spearman"] > 0.7


def test_regression_metrics_on_known_values():
    """Kendall's tau, Spearman and R^2 of hand-checkable predictions (one network per sample)."""
    target = D.Target("test_acc", "regression")
    y = np.array([0.1, 0.2, 0.3, 0.4], np.float32)
    samples = D.Samples(np.arange(4), np.ones(4, np.int64), y)
    exact = T.metrics(target, y.copy(), samples)
    assert exact["mae"] == 0 and exact["kendall_tau"] == 1 and exact["spearman"] == 1 and exact["r2"] == 1
    swapped = T.metrics(target, np.array([0.2, 0.1, 0.3, 0.4], np.float32), samples)
    # one discordant pair of six: tau = (5 - 1) / 6; R^2 = 1 - 0.02 / 0.05
    np.testing.assert_allclose([swapped["kendall_tau"], swapped["r2"]], [4 / 6, 0.6], rtol=1e-5)
    mean = T.metrics(target, np.full(4, 0.25, np.float32), samples)
    assert mean["kendall_tau"] == 0 and abs(mean["r2"]) < 1e-6


def test_learning_rate_schedule_is_the_reference_staircase():
    """optax's staircase decay as the reference's: ``lrate * decay ** floor(step / (total // decays))``."""
    settings = T.TrainSettings(lrate=1e-3, decay=0.95, decays=50)
    rates = T.learning_rates(settings, 1000)  # period 20: the rate drops at steps 20, 40, ..., 980
    assert rates.dtype == np.float32 and rates.shape == (1000,)
    pinned = {0: 1e-3, 19: 1e-3, 20: 9.5e-4, 39: 9.5e-4, 40: 9.025e-4, 999: 1e-3 * 0.95**49}
    for step, value in pinned.items():
        assert rates[step] == np.float32(value), (step, rates[step], value)
    assert list(np.flatnonzero(np.diff(rates)) + 1) == list(range(20, 1000, 20))
    for total, decays in ((1000, 50), (12, 50), (12, 3), (99_991, 7)):  # 12 // 50 = 0: a period of 1 step
        settings = T.TrainSettings(lrate=3e-4, decay=0.9, decays=decays)
        period = max(1, total // decays)
        hand = np.array([np.float32(3e-4 * 0.9 ** (k // period)) for k in range(total)])
        np.testing.assert_array_equal(T.learning_rates(settings, total), hand)
    with pytest.raises(ConfigError, match="decays=0"):
        T.TrainSettings(decays=0)
    with pytest.raises(ConfigError, match="decay=1.5"):
        T.TrainSettings(decay=1.5)


def test_stats_baseline_learns_planted_targets(planted_zoo, lrate_zoo):
    for name, zoo in (("optimizer", planted_zoo), ("lrate", lrate_zoo)):
        reader = WeightReader(zoo)
        split = D.split_networks(zoo.members.index, seed=0, test_fraction=0.25, val_fraction=0.0)
        target = D.resolve_targets(name, zoo)[0][0]
        samples = D.make_samples(zoo, target, split, (1, 2, 3), seed=0)
        x_train, names = T.stats_features(zoo, reader, samples["train"], "whole")
        x_test, _ = T.stats_features(zoo, reader, samples["test"], "whole")
        trees = T.fit_stats(target, x_train, samples["train"].y, 0, 30)
        result = T.metrics(target, T.stats_outputs(trees, target, x_test), samples["test"])
        if name == "optimizer":
            assert result["accuracy"] > 0.9
        else:
            assert result["spearman"] > 0.9


def test_unit_spread_by_hand():
    n = count_weights(SMALL)["total"]
    vector = np.arange(n, dtype=np.float32)
    spread = dict(zip(unit_spread_names(SMALL), unit_spread(vector, SMALL)))
    assert len(spread) == len(unit_spread(vector, SMALL)) == 6 * len(UNIT_VALUES) * len(UNIT_SPREAD)
    # conv0's 4 units: biases 108..111, moving variances 124..127; incoming means 13, 40, 67, 94
    assert (spread["conv0/units:bias:min"], spread["conv0/units:bias:max"]) == (108, 111)
    assert spread["conv0/units:bias:mean"] == pytest.approx(109.5)
    assert spread["conv0/units:bn_var:q50"] == 126  # nearest rank of 4 values
    assert spread["conv0/units:mean:std"] == pytest.approx(np.std([13, 40, 67, 94]))
    fc = unit_spread_names(SMALL, "fc")
    assert fc[0].startswith("fc0/") and len(unit_spread(vector, SMALL, "fc")) == len(fc)


def test_unitstats_features_extend_stats(planted_zoo):
    reader = WeightReader(planted_zoo)
    ids = planted_zoo.members.index.to_numpy()[:6]
    samples = D.Samples(ids, np.full(len(ids), 2), np.zeros(len(ids), np.int32))
    cache = {}
    stats, stats_names = T.stats_features(planted_zoo, reader, samples, "whole", cache)
    both, both_names = T.stats_features(planted_zoo, reader, samples, "whole", cache, "unitstats")
    assert both_names[: len(stats_names)] == stats_names and len(both_names) > len(stats_names)
    np.testing.assert_array_equal(both[:, : len(stats_names)], stats)
    assert sorted({key[-1] for key in cache}) == ["spread", "stats"] and len(cache) == 2 * len(ids)  # stats rows reused
    assert np.isfinite(both).all()
    with pytest.raises(ConfigError, match="not one of stats, unitstats"):
        T.stats_features(planted_zoo, reader, samples, "whole", cache, "units")


def test_stats_features_align_mixed_architectures(mixed_zoo):
    ids = mixed_zoo.members.index.to_numpy()
    samples = D.Samples(ids, np.full(len(ids), 2), np.zeros(len(ids), np.int32))
    table, names = T.stats_features(mixed_zoo, WeightReader(mixed_zoo), samples, "whole")
    assert table.shape == (len(ids), len(names)) and len(set(names)) == len(names)
    fc2 = names.index("fc2/kernel:mean")  # only DEEPER has a third FC layer
    assert np.isnan(table[ids % 2 == 1, fc2]).all() and np.isfinite(table[ids % 2 == 0, fc2]).all()
    assert np.isfinite(np.delete(table, [j for j, n in enumerate(names) if n.startswith("fc2")], axis=1)).all()


def test_metrics_average_per_network_first():
    target = D.Target("optimizer", "classification", OPTIMIZERS)
    samples = D.Samples(np.array([1, 1, 1, 1, 2, 2]), np.array([1, 2, 3, 4, 1, 2]), np.array([0, 0, 0, 0, 1, 1]))
    probs = np.eye(3)[[0, 0, 0, 1, 1, 1]]
    result = T.metrics(target, probs, samples)
    assert result["accuracy"] == pytest.approx((0.75 + 1.0) / 2)
    assert result["sample_accuracy"] == pytest.approx(5 / 6)
    assert result["confusion"] == [[3, 1, 0], [0, 2, 0], [0, 0, 0]]


def test_report_plots_leave_the_callers_matplotlib_backend_alone(tmp_path):
    """A notebook's inline backend survives a meta report (figures are made without pyplot)."""
    import matplotlib

    from nwsjax.meta import report

    before = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        report.plot_confusion(tmp_path / "c.png", [[3, 1], [0, 4]], ["adam", "sgd"], "optimizer")
        assert matplotlib.get_backend() == "svg"
        assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        matplotlib.use(before)


# --------------------------------------------------------------------------- #
# The DMC as the reference ran it: batch norm at test time, the 64-slice number, budgets
# --------------------------------------------------------------------------- #


def test_dmc_batch_norm_at_test_time_normalizes_by_the_test_batch():
    """test_norm="batch": a sample's output depends on the other samples of its batch, and in
    the per-network evaluation on the other slices of its own network only; "running": on neither."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 256)).astype(np.float32)  # 2 networks x 4 slices
    position = np.zeros((2, 4), np.float32)
    changed = x.copy()
    changed[0, 1:] *= 3.0  # the other slices of network 0
    other = x.copy()
    other[1] += 1.0  # the slices of network 1
    variables = None
    for norm in ("batch", "running"):
        module = DMC(3, width=0.125, dropout=0.0, test_norm=norm)
        if variables is None:
            variables = module.init(jax.random.key(0), x[:, :1], position[:, :1])
            variables = {"params": variables["params"], "batch_stats": jax.tree.map(
                lambda v: v + 0.5, variables["batch_stats"])}  # running averages unlike any batch's
        forward = T._forward(module, "classification", True)
        every = np.ones(2, bool)
        base, moved, elsewhere = (np.asarray(forward(variables, v, position, every)) for v in (x, changed, other))
        assert T.normalizes_by_batch(module) == (norm == "batch")
        if norm == "batch":
            assert np.abs(base[0, 0] - moved[0, 0]).max() > 1e-2  # its network's other slices matter
            np.testing.assert_allclose(base[0], elsewhere[0], atol=2e-4)  # another network's do not
            # single slices (one per sample): the whole batch is one batch. The 4 slices of
            # network 0 as 4 samples give the per-network outputs; another sample changes them.
            alone = np.asarray(forward(variables, x[0][:, None], position[0][:, None], np.ones(4, bool)))
            np.testing.assert_allclose(alone[:, 0], base[0], atol=2e-4)
            moved_alone = np.asarray(forward(variables, changed[0][:, None], position[0][:, None], np.ones(4, bool)))
            assert np.abs(alone[0, 0] - moved_alone[0, 0]).max() > 1e-2
            # padding (valid False) is left out of the statistics: what it holds changes nothing
            junk = x.copy()
            junk[0, 3] = 100.0
            padded = [np.asarray(forward(variables, v[0][:, None], position[0][:, None], np.array([1, 1, 1, 0], bool)))
                      for v in (x, junk)]
            np.testing.assert_allclose(padded[0][:3], padded[1][:3], atol=2e-4)
            assert np.abs(padded[0][0] - alone[0]).max() > 1e-3  # 3 samples' statistics, not 4
        else:
            np.testing.assert_allclose(base[0, 0], moved[0, 0], atol=2e-4)
            np.testing.assert_allclose(base[0], elsewhere[0], atol=2e-4)


def test_slice_metrics_count_correct_slices_not_votes():
    """The reference's 64-slice number: the fraction of slices correct per network, then the mean."""
    target = D.Target("optimizer", "classification", OPTIMIZERS)
    samples = D.Samples(np.array([1, 1, 2]), np.array([1, 2, 1]), np.array([0, 0, 2]))
    # network 1, snapshot 1: 3 of 4 slices right; snapshot 2: 1 of 4; network 2: 2 of 4 (a tie the vote breaks to class 0)
    predicted = np.array([[0, 0, 0, 1], [0, 1, 1, 2], [2, 0, 2, 0]])
    outputs = np.eye(3)[predicted]  # [3 samples, 4 slices, 3 classes]
    result = T.slice_metrics(target, outputs, samples)
    assert result["accuracy"] == pytest.approx(((0.75 + 0.25) / 2 + 0.5) / 2)
    assert result["sample_accuracy"] == pytest.approx(1.5 / 3)
    vote = T.metrics(target, outputs.mean(1), samples)
    assert vote["accuracy"] == pytest.approx((0.5 + 0.0) / 2)  # votes: 0 (right), 1 (wrong); 0 (wrong)
    regression = T.slice_metrics(D.Target("lrate", "regression"), np.array([[1.0, 3.0], [2.0, 2.0]]),
                                 D.Samples(np.array([1, 2]), np.array([1, 1]), np.array([2.0, 0.0])))
    assert regression["mae"] == pytest.approx((1.0 + 2.0) / 2)  # a mean of |errors|, not the error of the mean


def test_budget_in_steps_learning_curve_and_early_stopping(planted_zoo):
    target = D.resolve_targets("optimizer", planted_zoo)[0][0]
    split = D.split_networks(planted_zoo.members.index, seed=0, test_fraction=0.25, val_fraction=0.0)
    samples = D.make_samples(planted_zoo, target, split, (1, 2, 3), seed=0)
    opts = T.ModelOptions(dmc_width=0.25, dmc_dropout=0.0, set_slices=2)
    spec = T.slice_spec("set", 128, "whole", opts)
    stream = T.make_stream("set", planted_zoo, WeightReader(planted_zoo), samples["train"], spec, batch_size=16,
                           buffer_bytes=1 << 26)
    module = T.build_model("set", target.num_outputs, opts)
    per_epoch = len(samples["train"]) // 16
    # a budget in steps, not epochs: points every 3 steps and at the last step, across epoch ends
    steps = per_epoch + 2
    settings = T.TrainSettings(epochs=50, steps=steps, eval_every=3, batch_size=16, progress=False)
    fitted = T.fit(module, target, stream, settings, seed=0, train_metric=lambda f: 0.5)
    assert fitted.steps == steps
    assert [r["step"] for r in fitted.history] == [*range(3, steps, 3), steps]
    assert [r["epoch"] for r in fitted.history] == pytest.approx([r["step"] / per_epoch for r in fitted.history])
    assert all(r["train_eval"] == 0.5 and np.isfinite(r["loss"]) and "val" not in r for r in fitted.history)
    # early stopping: validation 0.4, 0.6 (best), 0.5, 0.55 -> patience 2 stops at the 4th point, keeps the 2nd
    scripted, seen = [0.4, 0.6, 0.5, 0.55, 0.9, 0.9], []

    def validate(f):
        seen.append(jax.device_get(f.variables))
        return scripted[len(seen) - 1]

    settings = T.TrainSettings(steps=100, eval_every=2, patience=2, batch_size=16, progress=False)
    fitted = T.fit(module, target, stream, settings, seed=0, validate=validate)
    assert fitted.steps == 8 and len(fitted.history) == 4 and fitted.best_step == 4
    assert [r["val"] for r in fitted.history] == scripted[:4]
    jax.tree.map(np.testing.assert_array_equal, fitted.variables, seen[1])
    with pytest.raises(ConfigError, match="patience=0"):
        T.TrainSettings(patience=0)


def test_dmc_pooling_matches_flax_max_pool_and_its_gradient():
    """The DMC's pooling: values and gradients of nn.max_pool (first maximum of a pair, ties
    included; an odd last weight dropped), bitwise."""
    import flax.linen as nn

    from nwsjax.meta.models import _pool

    rng = np.random.default_rng(0)
    for length in (10, 11):
        x = np.maximum(rng.standard_normal((3, length, 2)), 0).astype(np.float32)  # ties at 0
        x[0, 2:4] = 0.5  # a tie of two positive values
        w = rng.standard_normal((3, length // 2, 2)).astype(np.float32)
        reference = lambda v: nn.max_pool(v, (2,), strides=(2,), padding="VALID")  # noqa: E731
        np.testing.assert_array_equal(_pool(x), reference(x))
        ours, theirs = (jax.grad(lambda v, f=f: (f(v) * w).sum())(x) for f in (_pool, reference))
        np.testing.assert_array_equal(ours, theirs)
        assert ours[0, 2, 0] == w[0, 1, 0] and ours[0, 3, 0] == 0
