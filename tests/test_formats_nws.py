"""Tests of nwsjax.formats.nws on NWS folders written here with plain numpy and pandas."""

from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd
import pytest

from nwsjax.errors import ConfigError, ZooError
from nwsjax.formats import nws

from format_files import NWS_COLUMNS, write_nws_lists, write_nws_network

K = 3
# Architecture f3-c3-d2-w4-u64 with batch norm, written out by hand from the reference:
# (layer, kernel shape or None for a batch-norm layer, width), in build order.
LAYERS = [
    ("conv0", (3, 3, 3, 4)),
    ("conv0_bn", 4),
    ("conv1", (3, 3, 4, 8)),
    ("conv1_bn", 8),
    ("conv2", (3, 3, 8, 16)),
    ("conv2_bn", 16),
    ("fc0", (4 * 4 * 16, 64)),
    ("fc0_bn", 64),
    ("fc1", (64, 32)),
    ("fc1_bn", 32),
]


BN = ("bias", "scale", "mean", "var")  # beta, gamma, moving mean, moving variance: the reference's order


def reference_tree(rng: np.random.Generator, classes: int, marked: bool = False) -> dict:
    """A random tree of f3-c3-d2-w4-u64 with ``classes`` outputs: per layer kernel and bias, per
    batch-norm layer beta, gamma, moving mean and variance (Flax names). ``marked``: every
    array holds one value instead, its number in build order (0, 1, 2, ...)."""
    tree, number = {}, iter(range(1000))
    for name, shape in [*LAYERS, ("out", (32, classes))]:
        sizes = {"kernel": shape, "bias": shape[-1]} if isinstance(shape, tuple) else dict.fromkeys(BN, shape)
        tree[name] = {
            key: np.full(size, float(next(number))) if marked else rng.normal(size=size) for key, size in sizes.items()
        }
    return tree


def reference_flatten(tree: dict, moving_stats: bool = True) -> tuple[np.ndarray, int, list]:
    """The reference's flattening order, written independently of nwsjax.

    Layer by layer: kernel grouped by output unit (for each output channel, each input
    channel, the k x k taps row by row; for a dense layer each unit's incoming weights),
    then bias, then batch-norm beta, gamma, and (``moving_stats``: the released vectors)
    moving mean and variance. Returns the vector, the conv length and the arrays'
    ``((layer, name), size)`` in order.
    """
    pieces, names, n_conv = [], [], 0
    for name, layer in tree.items():
        if "kernel" in layer:
            kernel = layer["kernel"]
            unit_major = kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4 else kernel.T
            arrays = {"kernel": unit_major.ravel(), "bias": layer["bias"]}
        else:
            arrays = {key: layer[key] for key in (BN if moving_stats else BN[:2])}
        pieces += list(arrays.values())
        names += [((name, key), len(array)) for key, array in arrays.items()]
        if name.startswith("conv"):
            n_conv = sum(len(p) for p in pieces)
    return np.concatenate(pieces), n_conv, names


ROWS = [  # the CSV rows of the three networks, as the released lists store them
    dict(dataset="mnist", lrate=0.001, batch_size=64, batch_norm=True, augmentation=False, optimizer=1,
         activation=3, initialization=2),
    dict(dataset="fashion", lrate=0.0025, batch_size=32, batch_norm=True, augmentation=True, optimizer=0,
         activation=0, initialization=1),
    dict(dataset="cifar10", lrate=0.004, batch_size=256, batch_norm="on", augmentation=1, optimizer=7,
         activation="ELU", initialization=0),
]
ARCH = dict(filter_size=3, depth_conv=3, depth_fc=2, width_conv=4, width_fc=64)


def write_nws(
    root: pathlib.Path, classes: int = 20, n_exports: int = 7, moving_stats: bool = True, marked: bool = False
) -> dict:
    """Writes networks 0, 1 (train.csv, relative paths) and 2 (test.csv, absolute path), by
    default in the released layout (20 outputs, moving statistics in the vectors).

    Returns ``{"csv": {split: path}, "vectors": [3, K, n] float64, "trees": [...], "errors": [...]}``.
    """
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    rows, vectors, trees, errors = [], [], [], []
    for i, props in enumerate(ROWS):
        folder = root / "data" / f"net{i}"
        snaps = []
        for _ in range(K):
            tree = reference_tree(rng, classes, marked)
            vector, n_conv, names = reference_flatten(tree, moving_stats)
            snaps.append(vector)
            trees.append(tree)
        vectors.append(snaps)
        error = np.column_stack([np.arange(n_exports + 2) * 10.0, rng.uniform(0, 90, (n_exports + 2, 4))])
        # two error rows past the exports: trimmed by stat.bin
        write_nws_network(folder, snaps, error, [n_exports, 10.0 * (n_exports - 1), n_exports - 1, 12.5])
        errors.append(error[:n_exports])
        path = f"data/net{i}" if i < 2 else str(folder.absolute())
        lengths = {"weightn_conv": n_conv, "weightn_fc": len(vector) - n_conv}
        rows.append({**props, **ARCH, **lengths, "path": path})
    csv = write_nws_lists(root, {"train": rows[:2], "test": rows[2:]})
    return {"csv": csv, "vectors": np.asarray(vectors), "trees": trees, "errors": errors, "names": names}


@pytest.fixture
def written(tmp_path):
    return write_nws(tmp_path / "nws")


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


# --------------------------------------------------------------------------- #
# Reading
# --------------------------------------------------------------------------- #


def test_members_map_indices_to_option_names_and_keep_the_split(written):
    assert NWS_COLUMNS == list(nws.CSV_COLUMNS)  # the test writer's columns are the released ones
    zoo = nws.open([written["csv"]["train"], written["csv"]["test"]])
    members = zoo.members
    assert list(members.index) == [0, 1, 2] and members.index.name == "member"
    assert list(members.split) == ["train", "train", "test"]
    assert list(members.optimizer) == ["rmsprop", "adam", 7]  # unknown index kept as found
    assert list(members.activation) == ["tanh", "relu", "elu"]
    assert list(members.initialization) == ["glorot_uniform", "normal", "constant"]
    assert list(members.batch_norm) == ["on", "on", "on"]
    assert list(members.augmentation) == ["off", "on", "on"]
    assert list(members.dataset) == ["mnist", "fashion", "cifar10"]  # names kept as found
    assert list(members.lrate) == [0.001, 0.0025, 0.004]
    assert list(members.num_classes) == [20, 20, 20]  # the released nets have 20 outputs
    assert list(members.moving_stats) == [True, True, True]  # and their vectors hold the moving statistics
    assert set(members.architecture) == {"f3-c3-d2-w4-u64"}
    assert members.path[0] == str((written["csv"]["train"].parent / "data" / "net0").absolute())
    assert zoo.num_snapshots == K
    assert set(zoo.properties) <= set(members.columns)


def test_split_from_a_mapping_and_errors_for_unnamed_lists(written, tmp_path):
    renamed = tmp_path / "nws" / "list_b.csv"
    renamed.write_bytes(written["csv"]["test"].read_bytes())
    zoo = nws.open({"train": written["csv"]["train"], "test": renamed})
    assert list(zoo.members.split) == ["train", "train", "test"]
    with pytest.raises(ZooError, match="train or test") as err:
        nws.open([renamed])
    one_line(err)
    with pytest.raises(ConfigError):
        nws.open({"validation": renamed})


def test_flat_reads_float64_as_float32_per_snapshot(written):
    zoo = nws.open(written["csv"])
    for k in range(1, K + 1):
        got = zoo.flat([0, 1, 2], snapshot=k)
        assert got.dtype == np.float32 and got.shape == written["vectors"][:, k - 1].shape
        np.testing.assert_array_equal(got, written["vectors"][:, k - 1].astype(np.float32))
    np.testing.assert_array_equal(zoo.flat([2]), zoo.flat([2], snapshot=K))
    with pytest.raises(ZooError, match="snapshots 1..3"):
        zoo.flat([0], snapshot=K + 1)
    with pytest.raises(ZooError, match="unknown member"):
        zoo.flat([9])


def test_params_and_layout_follow_the_reference_order(written):
    zoo = nws.open(written["csv"])
    params, stats = zoo.params([0, 1], snapshot=2), zoo.batch_stats([0, 1], snapshot=2)
    for row, member in enumerate([0, 1]):
        tree = written["trees"][member * K + 1]
        for layer, arrays in tree.items():
            for name, array in arrays.items():
                got = (stats if name in ("mean", "var") else params)[layer][name][row]
                np.testing.assert_allclose(got, array, rtol=1e-6, atol=1e-6)
    arch = zoo.architecture(0)
    assert (arch.filter_size, arch.depth_conv, arch.width_conv, arch.num_classes) == (3, 3, 4, 20)
    segments = zoo.layout(0)
    assert segments[0].path == ("conv0", "kernel") and segments[0].offset == 0
    conv = sum(s.size for s in segments if s.part == "conv")
    assert conv == zoo.members.weightn_conv[0]


@pytest.mark.parametrize("classes, moving_stats", [(20, True), (20, False), (10, True), (10, False)])
def test_both_variants_are_recognised_by_their_lengths(tmp_path, classes, moving_stats):
    """Vectors with or without the moving statistics, 20- or 10-wide outputs; every array marked with
    its number: the segments fall exactly on the arrays the reference wrote."""
    written = write_nws(tmp_path / "nws", classes=classes, moving_stats=moving_stats, marked=True)
    zoo = nws.open(written["csv"])
    assert list(zoo.members.num_classes) == [classes] * 3
    assert list(zoo.members.moving_stats) == [moving_stats] * 3
    assert set(zoo.members.architecture) == {"f3-c3-d2-w4-u64"}
    vector = zoo.flat([1], snapshot=2)[0]
    segments = zoo.layout(1)
    assert [(s.path, s.size) for s in segments] == written["names"]
    tree = written["trees"][0]  # marked: every array holds its number
    for segment in segments:
        mark = tree[segment.path[0]][segment.path[1]].flat[0]
        np.testing.assert_array_equal(vector[segment.offset : segment.offset + segment.size], mark)
    assert sum(s.size for s in segments if s.part == "conv") == zoo.members.weightn_conv[1]
    params = zoo.params([1])
    assert params["out"]["kernel"].shape == (1, 32, classes)
    np.testing.assert_array_equal(params["conv0_bn"]["scale"][0], tree["conv0_bn"]["scale"])
    if moving_stats:
        np.testing.assert_array_equal(zoo.batch_stats([1])["fc1_bn"]["var"][0], tree["fc1_bn"]["var"])
    else:
        with pytest.raises(ZooError, match="no batch-norm moving statistics") as err:
            zoo.batch_stats([1])
        one_line(err)


def test_reading_is_lazy(written, monkeypatch):
    real = np.fromfile

    def refuse(*args, **kwargs):
        raise AssertionError("open() must not read weight files")

    monkeypatch.setattr(np, "fromfile", refuse)
    zoo = nws.open(written["csv"])
    monkeypatch.setattr(np, "fromfile", real)
    for path in (written["csv"]["train"].parent / "data" / "net1").rglob("*.bin"):
        path.unlink()  # flat() of other networks never touches these
    want = written["vectors"][0, 0].astype(np.float32)
    np.testing.assert_array_equal(zoo.flat([0, 2], snapshot=1)[0], want)


def test_curves_and_stats_come_from_error_and_stat_files(written):
    zoo = nws.open(written["csv"])
    stats = zoo.stats
    assert list(stats.exports) == [7, 7, 7] and stats.seconds[0] == 12.5
    curves = zoo.curves
    assert len(curves) == 3 * 7  # error.bin rows past stat.bin's export count are dropped
    one = curves[curves.member == 1]
    errors = written["errors"][1]
    assert list(one.export) == list(range(1, 8)) and list(one.epoch) == list(range(7))
    np.testing.assert_allclose(one.steps, errors[:, 0])
    np.testing.assert_allclose(one.train_acc, 1 - errors[:, 1] / 100)
    np.testing.assert_allclose(one.val_acc, 1 - errors[:, 2] / 100)
    np.testing.assert_allclose(one.test_acc, 1 - errors[:, 3] / 100)
    np.testing.assert_allclose(one.smoothed_val_acc, 1 - errors[:, 4] / 100)


# --------------------------------------------------------------------------- #
# Malformed folders and lists
# --------------------------------------------------------------------------- #


def test_missing_bin_names_the_network(written):
    (written["csv"]["train"].parent / "data" / "net1" / "weights" / "002.bin").unlink()
    zoo = nws.open(written["csv"])
    with pytest.raises(ZooError, match=r"network 1 .*weights/002\.bin missing") as err:
        zoo.flat([0, 1], snapshot=2)
    one_line(err)


def test_wrong_length_names_the_network(written):
    path = written["csv"]["test"].parent / "data" / "net2" / "weights" / "001.bin"
    np.fromfile(path)[:-3].tofile(path)
    zoo = nws.open(written["csv"])
    with pytest.raises(ZooError, match=r"network 2 .*weightn_conv \+ weightn_fc") as err:
        zoo.flat([2], snapshot=1)
    one_line(err)


def test_length_in_the_csv_that_disagrees_with_the_files_names_the_network(written):
    frame = pd.read_csv(written["csv"]["train"])
    frame.loc[0, "weightn_fc"] += 5
    frame.to_csv(written["csv"]["train"], index=False)
    zoo = nws.open(written["csv"])
    with pytest.raises(ZooError, match=r"network 0 "):
        zoo.flat([0])
    with pytest.raises(ZooError, match=r"network 0: .*fit no architecture") as err:
        zoo.params([0])  # 5 extra FC weights fit no number of classes
    one_line(err)
    assert pd.isna(zoo.members.num_classes[0])
    assert zoo.flat([1]).shape == (1, written["vectors"].shape[-1])


def test_missing_column_is_named(written):
    frame = pd.read_csv(written["csv"]["train"]).drop(columns=["weightn_fc"])
    frame.to_csv(written["csv"]["train"], index=False)
    with pytest.raises(ZooError, match="weightn_fc missing") as err:
        nws.open(written["csv"])
    one_line(err)


def test_bad_csv_path_names_the_network(written):
    frame = pd.read_csv(written["csv"]["train"])
    frame.loc[1, "path"] = "data/no-such-net"
    frame.to_csv(written["csv"]["train"], index=False)
    zoo = nws.open(written["csv"])
    with pytest.raises(ZooError, match=r"network 1 \(.*no-such-net\)") as err:
        zoo.flat([1])
    one_line(err)
    with pytest.raises(ZooError, match="network 1"):
        _ = zoo.curves


def test_first_network_missing_or_csv_missing(written, tmp_path):
    with pytest.raises(ZooError, match="no such NWS CSV") as err:
        nws.open({"train": tmp_path / "nope.csv"})
    one_line(err)
    frame = pd.read_csv(written["csv"]["train"])
    frame.loc[0, "path"] = "data/missing"
    frame.to_csv(written["csv"]["train"], index=False)
    with pytest.raises(ZooError, match=r"network 0 .*snapshots=K"):
        nws.open(written["csv"])
    assert nws.open(written["csv"], snapshots=K).num_snapshots == K


# --------------------------------------------------------------------------- #
# Writing
# --------------------------------------------------------------------------- #


def test_export_of_an_imported_zoo_round_trips(written, tmp_path):
    zoo = nws.open(written["csv"])
    csvs = nws.export(zoo, tmp_path / "again")
    assert set(csvs) == {"train", "test"}
    frame = pd.read_csv(csvs["train"])
    assert list(frame.columns) == [*nws.CSV_COLUMNS, "member"]
    assert list(frame.optimizer) == [1, 0] and list(frame.activation) == [3, 0]
    assert list(frame.batch_norm) == [True, True] and list(frame.augmentation) == [False, True]
    assert list(frame.path) == ["nets/000000", "nets/000001"]
    again = nws.open(csvs)
    labels = [*nws.CSV_COLUMNS[:13], "split", "weightn_conv", "weightn_fc"]
    pd.testing.assert_frame_equal(again.members[labels], zoo.members[labels])
    for k in range(1, K + 1):
        np.testing.assert_array_equal(again.flat([0, 1, 2], k), zoo.flat([0, 1, 2], k))
    pd.testing.assert_frame_equal(again.curves, zoo.curves)
    pd.testing.assert_frame_equal(again.stats, zoo.stats)


def test_export_split_argument(written, tmp_path):
    zoo = nws.open(written["csv"])
    csvs = nws.export(zoo, tmp_path / "a", split={0: "test", 1: "train", 2: "train"})
    assert list(pd.read_csv(csvs["test"]).member) == [0]
    csvs = nws.export(zoo, tmp_path / "b", split=0.34, seed=1)
    assert len(pd.read_csv(csvs["test"])) == 1 and len(pd.read_csv(csvs["train"])) == 2
    with pytest.raises(ConfigError, match="no entry for member ids"):
        nws.export(zoo, tmp_path / "c", split={0: "test"})
    with pytest.raises(ConfigError, match="not 'train' or 'test'"):
        nws.export(zoo, tmp_path / "d", split={0: "val", 1: "train", 2: "train"})


def test_member_column_gives_ids_and_must_be_unique(written):
    for split, ids in (("train", [10, 11]), ("test", [10])):
        frame = pd.read_csv(written["csv"][split])
        frame["member"] = ids
        frame.to_csv(written["csv"][split], index=False)
    with pytest.raises(ZooError, match="repeats ids") as err:
        nws.open(written["csv"])
    one_line(err)
    frame["member"] = [3]
    frame.to_csv(written["csv"]["test"], index=False)
    assert list(nws.open(written["csv"]).members.index) == [3, 10, 11]
