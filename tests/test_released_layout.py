"""Zoos in the released NWS vector layout, as another framework writes them (plain numpy and pandas
here, never nwsjax's exporter): the importer finds the variant from the lengths, the segments
fall on the arrays, and every meta model and the where analysis run on either variant."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nwsjax.formats import nws
from nwsjax.meta.models import statistic_names, unit_tokens, weight_statistics

from format_files import write_nws_lists, write_nws_network
from test_meta_cli import _cli

K = 3
NETWORKS = 24
DATASETS = ("mnist", "fashion", "cifar10")
# f3-c3-d2-w4-u64 with batch norm: (layer, kernel shape) in build order
KERNELS = [("conv0", (3, 3, 3, 4)), ("conv1", (3, 3, 4, 8)), ("conv2", (3, 3, 8, 16)), ("fc0", (256, 64)),
           ("fc1", (64, 32))]
ARCH = dict(filter_size=3, depth_conv=3, depth_fc=2, width_conv=4, width_fc=64)


def released_arrays(classes: int, moving_stats: bool) -> list[tuple[str, str, int]]:
    """``(layer, array, size)`` in the reference's order: kernel, bias, then batch-norm beta, gamma
    and (the released vectors) moving mean and variance; the output layer last."""
    arrays = []
    for layer, shape in [*KERNELS, ("out", (32, classes))]:
        arrays += [(layer, "kernel", int(np.prod(shape))), (layer, "bias", shape[-1])]
        if layer != "out":
            norm = ("beta", "gamma", "moving_mean", "moving_variance") if moving_stats else ("beta", "gamma")
            arrays += [(f"{layer}_bn", name, shape[-1]) for name in norm]
    return arrays


def marked(arrays) -> np.ndarray:
    """A vector whose array number ``i`` holds ``i + 1`` everywhere."""
    return np.concatenate([np.full(size, i + 1.0) for i, (*_, size) in enumerate(arrays)])


def write_zoo(root, classes: int, moving_stats: bool) -> dict:
    """24 networks; the dataset (``i % 3``) planted in the spread of the weights; every fourth in the test list."""
    arrays = released_arrays(classes, moving_stats)
    n = sum(size for *_, size in arrays)
    n_conv = sum(size for layer, _, size in arrays if layer.startswith("conv"))
    rows = {"train": [], "test": []}
    for i in range(NETWORKS):
        vectors = np.random.default_rng(i).standard_normal((K, n)) * 4.0 ** (i % 3 - 1)
        errors = np.column_stack([np.arange(4) * 10.0, np.full((4, 4), 50.0)])
        write_nws_network(root / "nets" / f"{i:03d}", vectors, errors, [4, 30.0, 3, 1.0])
        rows["test" if i % 4 == 3 else "train"].append(dict(
            dataset=DATASETS[i % 3], lrate=0.001, batch_size=64, batch_norm=True, augmentation=False, optimizer=0,
            activation=0, initialization=2, **ARCH, weightn_conv=n_conv, weightn_fc=n - n_conv, path=f"nets/{i:03d}"))
    return write_nws_lists(root, rows)


# (output units, moving statistics in the vectors, models run): the released layout, and vectors of the
# trainable parameters with a 10-wide output layer (what nwsjax wrote before). The slice models (dmc, set)
# read vectors only; set stands for both here. global needs one vector length, which either variant has.
VARIANTS = {"released": (20, True, "set,units,global,stats"), "trainable-only-10": (10, False, "set,units,stats")}


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request, tmp_path_factory):
    classes, moving_stats, models = VARIANTS[request.param]
    return classes, moving_stats, models, write_zoo(tmp_path_factory.mktemp(request.param), classes, moving_stats)


def test_segments_stats_and_units_fall_on_the_arrays(variant):
    classes, moving_stats, _, csv = variant
    zoo = nws.open(csv)
    assert list(zoo.members.num_classes.unique()) == [classes]
    assert list(zoo.members.moving_stats.unique()) == [moving_stats]
    arrays = released_arrays(classes, moving_stats)
    segments = zoo.layout(0)
    names = {"beta": "bias", "gamma": "scale", "moving_mean": "mean", "moving_variance": "var"}
    assert [(s.path, s.size) for s in segments] == [((layer, names.get(a, a)), size) for layer, a, size in arrays]
    vector = marked(arrays)
    for i, segment in enumerate(segments):
        np.testing.assert_array_equal(vector[segment.offset : segment.offset + segment.size], i + 1)
    stats = dict(zip(statistic_names(segments), weight_statistics(vector, segments)))
    assert stats["conv0/kernel:mean"] == 1 and stats["conv0_bn/scale:max"] == 4 and stats["out/bias:min"] == len(arrays)
    assert ("fc1_bn/var:mean" in stats) == moving_stats
    tokens, layers = unit_tokens(vector, segments)
    assert len(tokens) == 4 + 8 + 16 + 64 + 32 + classes and layers[-1] == 5
    conv2 = 2 * (6 if moving_stats else 4)  # arrays before conv2's
    # conv2's units: incoming weights, bias, batch-norm scale (gamma) and offset (beta) in columns 0, 8, 9, 10
    np.testing.assert_array_equal(tokens[12, [0, 8, 9, 10]], [conv2 + 1, conv2 + 2, conv2 + 4, conv2 + 3])


def test_the_models_and_the_where_analysis_run(variant, tmp_path, capsys):
    classes, moving_stats, models, csv = variant
    out = tmp_path / "report"
    argv = ["--zoo", f"{csv['train']},{csv['test']}", "--target", "dataset", "--model", models, "--analysis", "where",
            "--part", "conv", "--slice-length", "128", "--positions", "5", "--epochs", "1", "--batch-size", "16",
            "--ensemble", "2", "--set-slices", "2", "--stats-iterations", "10", "--quiet", "--seed", "1",
            "--dmc-width", "0.25", "--dmc-dropout", "0", "--out", str(out)]  # model sizes as in test_meta.py
    assert _cli().main(argv) == 0
    capsys.readouterr()
    dataset = json.loads((out / "results.json").read_text())["targets"]["dataset"]
    assert set(dataset["models"]) == set(models.split(","))
    for model in dataset["models"].values():
        assert 0 <= model["single"]["accuracy"] <= 1
    arrays = released_arrays(classes, moving_stats)
    starts = np.cumsum([0] + [size for *_, size in arrays])
    kernels = {layer: int(starts[i]) for i, (layer, name, _) in enumerate(arrays) if name == "kernel"}
    marks = dataset["analyses"]["where"]["set"]["boundaries"]  # where each layer starts
    assert [(m["layer"], m["offset"]) for m in marks] == list(kernels.items())


def test_a_zoo_written_before_the_moving_statistics_keeps_its_vectors(tmp_path):
    """A members table whose weightn_conv counts no moving statistics (and a 10-wide head): flat, layout
    and params give that layout; the statistics stay readable with batch_stats."""
    from nwsjax.layout import count_weights, layout
    from nwsjax.model import Architecture
    from nwsjax.zoo import ZooWriter, open_zoo

    arch = Architecture(3, 3, 2, 4, 64, num_classes=10)
    rng = np.random.default_rng(0)
    writer = ZooWriter(tmp_path / "zoo", {"train": {"snapshots": 2}})
    for member, moving_stats in enumerate((False, True)):
        counts = count_weights(arch, moving_stats)
        trees = {"params": {}, "batch_stats": {}}
        for s in layout(arch):
            trees[s.collection].setdefault(s.path[0], {})[s.path[1]] = rng.normal(size=(2, *s.shape)).astype(np.float32)
        record = dict(member=member, dataset="digits", batch_norm="on", architecture=arch.label(), **ARCH,
                      weightn_conv=counts["conv"], weightn_fc=counts["fc"], status="finished")
        writer.add_member(arch.label(), arch, record, trees, [])
    writer.wait()
    writer.close()
    zoo = open_zoo(tmp_path / "zoo")
    old, new = zoo.flat([0], snapshot=2)[0], zoo.flat([1], snapshot=2)[0]
    assert (len(old), len(new)) == (count_weights(arch, False)["total"], count_weights(arch)["total"])
    assert zoo.layout(0) == layout(arch, moving_stats=False) and zoo.layout(1) == layout(arch)
    assert isinstance(zoo.flat([0, 1]), list)  # two lengths
    kernel = next(s for s in zoo.layout(0) if s.path == ("fc1", "kernel"))
    np.testing.assert_array_equal(old[kernel.offset : kernel.offset + kernel.size],
                                  zoo.params([0], snapshot=2)["fc1"]["kernel"][0].T.ravel())
    assert zoo.batch_stats([0], snapshot=2)["fc1_bn"]["var"].shape == (1, 32)
