"""Meta runs on the public formats: NWS train/test CSVs and Small CNN Zoo folders as
``experiments/meta.py --zoo`` takes them, in the released layouts (files written here
with plain numpy and pandas, a label planted in the weights)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from nwsjax.errors import ConfigError
from nwsjax.formats import nws, open_any, smallcnnzoo
from nwsjax.layout import count_weights
from nwsjax.meta import data as D
from nwsjax.meta.models import UNIT_FEATURES, unit_tokens
from nwsjax.meta.reader import WeightReader
from nwsjax.zoo import WeightSource

from format_files import write_nws_lists, write_nws_network, write_small_cnn_zoo
from test_formats_smallcnnzoo import VARIABLES, WIDTH
from test_meta import SMALL
from test_meta_cli import ROOT, SCRIPT, _cli, _error

K = 3
NETWORKS = 36
DATASETS = ("mnist", "fashion", "cifar10")
EXPORTS = 4  # initialization + 3 epochs; snapshots are exports round(linspace(1, 4, 3)) = 1, 2, 4


def spread(i: int, n: int) -> np.ndarray:
    """``[K, n]`` weights whose spread tells the class ``i % 3``."""
    return np.random.default_rng(i).standard_normal((K, n)) * 4.0 ** (i % 3 - 1)


def error_of(i: int) -> np.ndarray:
    """Test error (%) of network ``i`` at each export."""
    return 90.0 - 20.0 * np.arange(EXPORTS) - i / 10


@pytest.fixture(scope="module")
def nws_lists(tmp_path_factory):
    """36 networks of our family in the released NWS layout; the dataset planted in the weights.

    Every fourth network is in the test list (3 per dataset). Returns ``{split: csv path}``.
    """
    root = tmp_path_factory.mktemp("nws")
    counts = count_weights(SMALL)
    rows = {"train": [], "test": []}
    for i in range(NETWORKS):
        errors = np.column_stack([np.arange(EXPORTS) * 10.0, np.full((EXPORTS, 2), 50.0), error_of(i),
                                  np.full(EXPORTS, 50.0)])
        write_nws_network(root / "nets" / f"{i:03d}", spread(i, counts["total"]), errors,
                          [EXPORTS, 30.0, EXPORTS - 1, 1.0])
        rows["test" if i % 4 == 3 else "train"].append(dict(
            dataset=DATASETS[i % 3], lrate=0.001, batch_size=64, batch_norm=True, augmentation=False, optimizer=0,
            activation=0, initialization=2, filter_size=SMALL.filter_size, depth_conv=SMALL.depth_conv,
            depth_fc=SMALL.depth_fc, width_conv=SMALL.width_conv, width_fc=SMALL.width_fc,
            weightn_conv=counts["conv"], weightn_fc=counts["fc"], path=f"nets/{i:03d}"))
    return write_nws_lists(root, rows, stem="nws_main")


OPTIMIZERS = ("adam", "sgd", "momentum")


@pytest.fixture(scope="module")
def scz_root(tmp_path_factory):
    """A Small CNN Zoo root with one dataset folder, ``mnist/``: 36 networks of 3
    checkpoints, ``config.optimizer`` planted in the weights."""
    root = tmp_path_factory.mktemp("scz")
    networks = [
        {"config": {"config.optimizer": OPTIMIZERS[i % 3], "config.learning_rate": 0.001 * (1 + i),
                    "config.activation": "relu", "config.dataset": "mnist", "config.random_seed": i},
         "weights": spread(i, WIDTH), "test_accuracy": [0.1, 0.5, 0.9 + i / 1000]}
        for i in range(NETWORKS)
    ]
    write_small_cnn_zoo(root / "mnist", VARIABLES, networks)
    return root


@pytest.fixture(scope="module")
def cli():
    return _cli()


# --------------------------------------------------------------------------- #
# The pieces: opening, targets, labels, reading, tokens
# --------------------------------------------------------------------------- #


def test_open_any_tells_the_formats_apart(nws_lists, scz_root, tmp_path):
    zoo = open_any(f"{nws_lists['train']},{nws_lists['test']}")
    assert isinstance(zoo, nws.NWSZoo) and len(zoo.members) == NETWORKS
    assert list(zoo.members.split).count("test") == NETWORKS // 4
    for spec in (scz_root / "mnist", scz_root, [scz_root / "mnist"]):  # a dataset folder, or the zoo's root
        assert isinstance(open_any(spec), smallcnnzoo.SmallCNNZoo)
    with pytest.raises(ConfigError, match="mixes CSV files and folders"):
        open_any(f"{nws_lists['train']},{scz_root}")
    renamed = nws_lists["test"].with_name("b.csv")
    renamed.write_bytes(nws_lists["test"].read_bytes())
    keyed = open_any(f"train={nws_lists['train']},test={renamed}")  # lists named without train/test
    assert list(keyed.members.split) == list(zoo.members.split)
    with pytest.raises(ConfigError, match="one train=PATH and one test=PATH"):
        open_any(f"train={nws_lists['train']},train={renamed}")
    with pytest.raises(Exception, match="not a zoo"):
        open_any(tmp_path)


def test_targets_of_format_zoos(nws_lists, scz_root):
    scz = open_any(scz_root / "mnist")
    targets, skipped = D.resolve_targets("all", scz)
    assert {t.name: t.kind for t in targets} == {
        "config.optimizer": "classification", "config.learning_rate": "regression", "test_acc": "regression"}
    assert targets[0].classes == ("adam", "momentum", "sgd")
    assert skipped == {"config.activation": "one class in this zoo (relu)", "config.dataset": "one class in this zoo (mnist)",
                       "config.random_seed": "a random seed, not a training choice"}
    with pytest.raises(ConfigError, match=r"'optimizer': this Small CNN Zoo does not record it; choose one or more "
                                          r"of config\.optimizer, .*test_acc, or all"):
        D.resolve_targets("optimizer", scz)
    zoo = open_any([nws_lists["train"], nws_lists["test"]])
    targets, skipped = D.resolve_targets("all", zoo)
    assert [t.name for t in targets] == ["dataset", "lrate", "test_acc"] and "optimizer" in skipped
    with pytest.raises(ConfigError, match="unknown target 'config.optimizer'; choose one or more of dataset, lrate"):
        D.resolve_targets("config.optimizer", zoo)


def test_test_accuracy_per_snapshot(nws_lists, scz_root):
    """NWS: snapshot j is export round(linspace(1, exports, K))[j-1] of error.bin; Small CNN Zoo: checkpoint j."""
    zoo = open_any([nws_lists["train"], nws_lists["test"]])
    table = D.accuracy_table(zoo)
    for member in (0, 30):
        i = int(zoo.members.path[member].rsplit("/", 1)[1])
        expected = 1 - error_of(i)[[0, 1, 3]] / 100
        np.testing.assert_allclose(table.loc[member].to_numpy(), expected)
    scz = open_any(scz_root / "mnist")
    samples = D.make_samples(scz, D.Target("test_acc", "regression"), D.Split(np.arange(30), np.arange(0), np.arange(30, 36)),
                             (2, 3), seed=0)
    np.testing.assert_allclose(samples["test"].y, [0.5, 0.9 + 0.030, 0.5, 0.931, 0.5, 0.932, 0.5, 0.933, 0.5, 0.934,
                                                   0.5, 0.935], rtol=1e-6)


def test_format_zoos_are_weight_sources(nws_lists, scz_root):
    for zoo in (open_any([nws_lists["train"], nws_lists["test"]]), open_any(scz_root)):
        assert isinstance(zoo, WeightSource)
        assert list(zoo.storage_parts([5, 2])) == ["", ""]  # every network stored on its own


def test_reader_reads_format_zoos_with_flat(nws_lists, scz_root):
    for zoo in (open_any([nws_lists["train"], nws_lists["test"]]), open_any(scz_root)):
        reader = WeightReader(zoo, cache_bytes=1 << 30)
        members, snapshots = np.array([5, 2, 5, 9]), np.array([1, 3, 3, 2])
        assert not reader.orbax and list(reader.parts(members)) == [""] * 4
        got = dict(reader.read(members, snapshots))
        for i in range(4):
            np.testing.assert_array_equal(got[i], zoo.flat([members[i]], int(snapshots[i]))[0])
        assert reader.counters == {"parts": 0, "reads": 4, "hits": 0}
        assert len(dict(reader.read(members, snapshots))) == 4 and reader.counters["hits"] == 4


def test_unit_tokens_of_a_small_cnn_zoo_layout(scz_root):
    zoo = open_any(scz_root)
    vector = zoo.flat([4], 2)[0]
    tokens, layers = unit_tokens(vector, zoo.layout(4))
    assert tokens.shape == (2 + 2 + 10, UNIT_FEATURES) and layers.tolist() == [0, 0, 1, 1] + [2] * 10
    kernel = vector[:18].reshape(2, 9)  # conv2d: 2 units of 3 x 3 x 1 weights, unit-major in NWS order
    np.testing.assert_allclose(tokens[:2, 0], kernel.mean(1), rtol=1e-6)
    np.testing.assert_allclose(tokens[:2, 8], vector[18:20])  # the biases
    assert tokens[:2, -3:].tolist() == [[0, 1, 0]] * 2 and tokens[-1, -3:].tolist() == [1, 0, 1]  # depth, conv, out


# --------------------------------------------------------------------------- #
# experiments/meta.py on the formats
# --------------------------------------------------------------------------- #

FAST = ["--epochs", "2", "--batch-size", "16", "--ensemble", "4", "--set-slices", "2", "--stats-iterations", "20",
        "--quiet", "--seed", "3"]


def test_nws_lists_keep_their_own_split(cli, nws_lists, tmp_path, capsys):
    zoo = f"{nws_lists['train']},{nws_lists['test']}"
    out = tmp_path / "report"
    argv = ["--zoo", zoo, "--target", "dataset", "--model", "set,stats", "--slice-length", "128", *FAST]
    assert cli.main([*argv, "--out", str(out)]) == 0
    assert "split: the zoo's own (train/test lists): 24 train, 3 validation (from the train side), 9 test" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    members = open_any(zoo).members
    listed = {split: {int(m) for m in members.index[members.split == split]} for split in ("train", "test")}
    assert results["split_source"] == "zoo" and results["zoo"]["format"] == "nws"
    assert set(results["split"]["test"]) == listed["test"]
    assert set(results["split"]["train"]) | set(results["split"]["val"]) == listed["train"]
    assert set(results["split"]["train"]).isdisjoint(results["split"]["val"])
    tested = set(pd.read_csv(nws_lists["test"]).path)  # the test list's networks, by folder
    assert {os.path.relpath(members.path[m], nws_lists["test"].parent) for m in results["split"]["test"]} == tested
    dataset = results["targets"]["dataset"]
    assert dataset["classes"] == ["mnist", "cifar10", "fashion"] and dataset["samples"]["test"]["networks"] == 9
    assert dataset["models"]["stats"]["single"]["accuracy"] > 0.8  # the planted spread; chance 1/3
    assert 0 <= dataset["models"]["set"]["ensemble"]["accuracy"] <= 1
    assert results["reader"]["parts"] == 0 and results["reader"]["reads"] > 0

    again = tmp_path / "random"
    argv = ["--zoo", zoo, "--target", "test_acc", "--model", "stats", "--random-split", *FAST, "--out", str(again)]
    assert cli.main(argv) == 0
    results = json.loads((again / "results.json").read_text())
    assert results["split_source"] == "random" and not set(results["split"]["test"]) == listed["test"]
    test_acc = results["targets"]["test_acc"]
    assert test_acc["kind"] == "regression" and test_acc["samples"]["test"] == {"networks": 7, "samples": 14}
    assert 0 < test_acc["chance"] < 0.5 and np.isfinite(test_acc["models"]["stats"]["single"]["mae"])


def test_small_cnn_zoo_folder(cli, scz_root, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["--zoo", str(scz_root / "mnist"), "--target", "config.optimizer", "--model", "units,stats", *FAST,
            "--out", str(out)]
    assert cli.main(argv) == 0
    capsys.readouterr()
    results = json.loads((out / "results.json").read_text())
    assert results["zoo"]["format"] == "smallcnnzoo" and results["split_source"] == "random"
    optimizer = results["targets"]["config.optimizer"]
    assert optimizer["classes"] == ["adam", "momentum", "sgd"]
    assert optimizer["models"]["stats"]["single"]["accuracy"] > 0.8
    assert np.isfinite(optimizer["models"]["units"]["history"][-1]["loss"])
    assert (out / "confusion-config.optimizer-units.png").is_file()


def test_bad_format_input_gives_one_line_errors(cli, nws_lists, scz_root, capsys):
    zoo = f"{nws_lists['train']},{nws_lists['test']}"
    assert "unknown target 'config.optimizer'" in _error(cli, capsys, "--zoo", zoo, "--target", "config.optimizer")
    missing = nws_lists["train"].parent / "nws_extra_test.csv"
    assert "no such NWS CSV" in _error(cli, capsys, "--zoo", f"{nws_lists['train']},{missing}", "--target", "dataset")
    line = _error(cli, capsys, "--zoo", f"{nws_lists['train']},{missing.with_name('val.csv')}", "--target", "dataset")
    assert "cannot tell whether this is the train or test list" in line and "test=" in line
    assert "mixes CSV files and folders" in _error(cli, capsys, "--zoo", f"{zoo},{scz_root}", "--target", "dataset")
    frame = pd.read_csv(nws_lists["train"])
    frame.loc[0, "weightn_fc"] += 5  # fits no architecture: the models that read layers refuse it before training
    broken = nws_lists["train"].with_name("broken_train.csv")
    frame.to_csv(broken, index=False)
    line = _error(cli, capsys, "--zoo", f"{broken},{nws_lists['test']}", "--target", "dataset", "--model", "stats")
    assert line.startswith("error: network 0: ") and "fit no architecture" in line and "--model dmc,set" in line
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--zoo", str(scz_root / "mnist"), "--target", "optimizer"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: target 'optimizer': this Small CNN Zoo does not record it")
    assert "config.optimizer" in lines[0] and "config.learning_rate" in lines[0]
