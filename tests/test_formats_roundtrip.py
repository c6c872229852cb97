"""Round trips of a trained zoo through the public formats: export, import, same vectors and labels."""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd
import pytest

from nwsjax.formats import nws, smallcnnzoo
from nwsjax.layout import count_weights
from nwsjax.space import PROPERTY_NAMES

IDS = [0, 1, 2]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """A tiny trained zoo: 3 members, 1 epoch, 3 snapshots (about 30 s of compiling)."""
    from nwsjax.data import load_dataset
    from nwsjax.population import TrainConfig, train_population
    from nwsjax.space import sample_members
    from nwsjax.stopping import StoppingConfig
    from nwsjax.zoo import ZooWriter, open_zoo

    tmp = tmp_path_factory.mktemp("formats")
    ds = load_dataset("digits")
    pins = {"filter_size": 3, "width_conv": 4, "width_fc": 64, "depth_conv": 3, "depth_fc": 2}
    pins["batch_size"] = 256
    members = sample_members(3, seed=0, datasets=["digits"], pins=pins)
    cfg = TrainConfig(stopping=StoppingConfig(max_epochs=1, min_epochs=1), snapshots=3)
    writer = ZooWriter(tmp / "zoo", {"train": {"snapshots": 3}})
    train_population(members, {"digits": ds}, writer, cfg)
    writer.wait()
    writer.close()
    return open_zoo(tmp / "zoo")


def assert_same_vectors(imported, zoo, ids=IDS):
    assert imported.num_snapshots == zoo.num_snapshots
    for k in range(1, zoo.num_snapshots + 1):
        got, want = imported.flat(ids, snapshot=k), zoo.flat(ids, snapshot=k)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, want, rtol=1e-7, atol=0)  # float32 -> float64 -> float32


def assert_same_params(imported, zoo):
    got, want = imported.params(IDS, snapshot=2), zoo.params(IDS, snapshot=2)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    jax.tree.map(np.testing.assert_array_equal, got, want)
    for i in IDS:  # the released layout: the moving statistics travel in the vectors, 20 outputs
        arch = zoo.architecture(i)
        assert arch.num_classes == 20 and zoo.flat([i]).shape[1] == count_weights(arch)["total"]
        got, want = imported.batch_stats([i], snapshot=2), zoo.batch_stats([i], snapshot=2)
        assert jax.tree.structure(got) == jax.tree.structure(want)
        jax.tree.map(np.testing.assert_array_equal, got, want)


def test_nws_round_trip(zoo, tmp_path):
    csvs = nws.export(zoo, tmp_path / "nws", split={0: "train", 1: "test", 2: "train"})
    frame = pd.read_csv(csvs["train"])
    assert list(frame.columns) == [*nws.CSV_COLUMNS, "member"]
    assert frame.optimizer.dtype.kind == "i" and frame.batch_norm.dtype == bool
    assert np.fromfile(tmp_path / "nws" / frame.path[0] / "weights" / "001.bin").dtype == np.float64

    imported = nws.open([csvs["train"], csvs["test"]])
    assert list(imported.members.index) == IDS
    assert list(imported.members.split) == ["train", "test", "train"]
    labels = [*PROPERTY_NAMES, "weightn_conv", "weightn_fc", "num_classes", "architecture"]
    pd.testing.assert_frame_equal(imported.members[labels], zoo.members[labels], check_dtype=False)
    assert_same_vectors(imported, zoo)
    assert all(imported.architecture(i) == zoo.architecture(i) for i in IDS)
    assert imported.layout(0) == zoo.layout(0)
    assert_same_params(imported, zoo)

    curves = imported.curves
    initialization = curves[curves.export == 1]
    assert initialization.train_acc.isna().all() and (initialization.steps == 0).all()
    trained = curves[curves.epoch >= 1].set_index(["member", "epoch"])
    want = zoo.curves.set_index(["member", "epoch"])
    for column in ("steps", "train_acc", "val_acc", "test_acc"):
        np.testing.assert_allclose(trained.loc[want.index, column], want[column], rtol=1e-12)
    stats = imported.stats
    assert list(stats.exports) == list(zoo.members.exports) and list(stats.epochs) == list(zoo.members.epochs)


def test_small_cnn_zoo_round_trip(zoo, tmp_path):
    folders = smallcnnzoo.export(zoo, tmp_path / "scz")
    assert [f.name for f in folders] == ["digits"]
    layout = pd.read_csv(folders[0] / "layout.csv")
    assert list(layout.columns) == list(smallcnnzoo.LAYOUT_COLUMNS)
    assert np.load(folders[0] / "weights.npy").shape == (3 * zoo.num_snapshots, zoo.flat([0]).shape[1])

    imported = smallcnnzoo.open(folders)
    assert list(imported.members.index) == IDS
    for ours, theirs in smallcnnzoo.CONFIG_NAMES.items():
        assert list(imported.members[theirs]) == list(zoo.members[ours]), ours
        assert theirs in imported.properties
    assert_same_vectors(imported, zoo)
    assert all(imported.architecture(i) == zoo.architecture(i) for i in IDS)
    assert imported.layout(0) == zoo.layout(0)
    assert_same_params(imported, zoo)
    np.testing.assert_allclose(imported.members.test_acc, zoo.members.test_acc)

    stored = smallcnnzoo.open(folders, order="stored")
    assert stored.flat([0]).shape == imported.flat([0]).shape
    assert not np.array_equal(stored.flat([0]), imported.flat([0]))  # kernels not grouped by unit

    curves = imported.curves[imported.curves.member == 1]
    exports = zoo.members.snapshot_exports[1]  # export e is after epoch e - 1
    by_epoch = zoo.curves.set_index(["member", "epoch"]).steps
    steps = {1: 0, **{e: by_epoch[(1, e - 1)] for e in exports if e > 1}}
    assert list(curves.step) == [steps[e] for e in exports]


def test_nws_to_small_cnn_zoo(zoo, tmp_path):
    """An imported NWS zoo exports to the Small CNN Zoo layout like our own zoos."""
    imported = nws.open(nws.export(zoo, tmp_path / "nws"))
    again = smallcnnzoo.open(smallcnnzoo.export(imported, tmp_path / "scz"))
    assert_same_vectors(again, zoo)
    assert list(again.members["config.optimizer"]) == list(zoo.members.optimizer)
