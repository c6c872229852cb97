"""Tests of nwsjax.formats.smallcnnzoo on folders written here with plain numpy and pandas,
in the layout of the released Small CNN Zoo (variables sorted by name: bias before kernel)."""

from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd
import pytest

from nwsjax.errors import ConfigError, ZooError
from nwsjax.formats import smallcnnzoo

from format_files import write_layout

# (variable, shape) in the order the released weights.npy stores them
VARIABLES = [
    ("sequential/conv2d/bias:0", (2,)),
    ("sequential/conv2d/kernel:0", (3, 3, 1, 2)),
    ("sequential/conv2d_1/bias:0", (2,)),
    ("sequential/conv2d_1/kernel:0", (3, 3, 2, 2)),
    ("sequential/dense/bias:0", (10,)),
    ("sequential/dense/kernel:0", (2, 10)),
]
WIDTH = sum(int(np.prod(s)) for _, s in VARIABLES)  # 88
STEPS = [0, 1, 20, 86]
CONFIGS = [  # per network; the last one crashed after two checkpoints
    {"config.optimizer": "adam", "config.activation": "relu", "config.w_init": "he_normal",
     "config.learning_rate": 0.01},
    {"config.optimizer": "sgd", "config.activation": "tanh", "config.w_init": "glorot_uniform",
     "config.learning_rate": 0.002},
    {"config.optimizer": "momentum", "config.activation": "relu", "config.w_init": "RandomNormal",
     "config.learning_rate": 0.03},
    {"config.optimizer": "adam", "config.activation": "selu", "config.w_init": "he_normal",
     "config.learning_rate": 0.5},
]


def write_small_zoo(folder: pathlib.Path, seed: int = 0, dataset: str = "mnist") -> pd.DataFrame:
    """Writes weights.npy, layout.csv and metrics.csv.gz; checkpoints in shuffled row order.

    Returns the metrics table as written, with the weights row in column ``row``.
    """
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    write_layout(folder, VARIABLES)
    records = []
    for n, config in enumerate(CONFIGS):
        steps = STEPS if n < 3 else STEPS[:2]
        for step in steps:
            records.append(
                {
                    "checkpoint": f"/cns/zoo/{dataset}/run{n}/permanent_ckpt-{step}",
                    **config,
                    "config.l2reg": 0.0,
                    "config.dropout": 0.1,
                    "config.train_fraction": 1.0,
                    "config.dataset": dataset,
                    "modeldir": f"/cns/zoo/{dataset}/run{n}",
                    "step": step,
                    "test_accuracy": rng.uniform(),
                    "test_loss": rng.uniform(),
                    "train_accuracy": rng.uniform(),
                    "train_loss": rng.uniform(),
                }
            )
    metrics = pd.DataFrame(records).sample(frac=1, random_state=seed).reset_index(drop=True)
    weights = rng.normal(size=(len(metrics), WIDTH)).astype(np.float32)
    np.save(folder / "weights.npy", weights)
    metrics.set_index("checkpoint").rename_axis(None).to_csv(folder / "metrics.csv.gz")
    return metrics.assign(row=np.arange(len(metrics)))


def nws_order(row: np.ndarray) -> np.ndarray:
    """The NWS order of one stored row, by hand: per layer the kernel by output unit, then the bias."""
    b0, k0, b1, k1, b2, k2 = np.split(row, np.cumsum([int(np.prod(s)) for _, s in VARIABLES])[:-1])
    return np.concatenate(
        [
            k0.reshape(3, 3, 1, 2).transpose(3, 2, 0, 1).ravel(), b0,
            k1.reshape(3, 3, 2, 2).transpose(3, 2, 0, 1).ravel(), b1,
            k2.reshape(2, 10).T.ravel(), b2,
        ]
    )


@pytest.fixture
def folder(tmp_path):
    path = tmp_path / "mnist"
    return path, write_small_zoo(path)


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message
    return message


def test_checkpoints_group_into_networks_ordered_by_step(folder):
    path, metrics = folder
    zoo = smallcnnzoo.open(path, order="stored")
    weights = np.load(path / "weights.npy")
    assert zoo.num_snapshots == 4 and list(zoo.members.index) == [0, 1, 2]
    assert zoo.info["left_out"] == [{"folder": str(path), "network": "/cns/zoo/mnist/run3", "checkpoints": 2}]
    members = zoo.members
    first_seen = list(dict.fromkeys(m for m in metrics.modeldir if not m.endswith("run3")))
    assert list(members.network) == first_seen  # ids in order of first checkpoint
    by_run = members.reset_index().set_index("network")
    runs = [f"/cns/zoo/mnist/run{n}" for n in range(3)]
    assert list(by_run.loc[runs, "config.optimizer"]) == ["adam", "sgd", "momentum"]
    assert list(by_run.loc[runs, "config.learning_rate"]) == [0.01, 0.002, 0.03]
    assert list(members.dataset) == ["mnist"] * 3 and list(members.checkpoints) == [4] * 3
    assert "config.w_init" in zoo.properties and "config.train_fraction" in zoo.properties
    assert (members.weightn_conv.iloc[0], members.weightn_fc.iloc[0]) == (58, 30)
    for member, run in zip(members.index, members.network):
        mine = metrics[metrics.modeldir == run].sort_values("step")
        assert members.test_acc[member] == mine.test_accuracy.iloc[-1]
        for k in range(1, 5):
            np.testing.assert_array_equal(zoo.flat([member], snapshot=k)[0], weights[mine.row.iloc[k - 1]])
    curves = zoo.curves
    assert list(curves.columns[:4]) == ["member", "snapshot", "checkpoint", "step"]
    assert list(curves[curves.member == 1].step) == STEPS
    first = members.network[0]
    assert list(curves.checkpoint[:2]) == [f"{first}/permanent_ckpt-{step}" for step in STEPS[:2]]


def test_nws_order_groups_kernels_by_output_unit(folder):
    path, metrics = folder
    zoo = smallcnnzoo.open(path)
    weights = np.load(path / "weights.npy")
    member = zoo.members.index[zoo.members.network == "/cns/zoo/mnist/run2"][0]
    row = metrics[(metrics.modeldir == "/cns/zoo/mnist/run2") & (metrics.step == 20)].row.iloc[0]
    np.testing.assert_array_equal(zoo.flat([member], snapshot=3)[0], nws_order(weights[row]))
    segments = zoo.layout(member)
    assert [(s.path, s.offset, s.part) for s in segments] == [
        (("conv2d", "kernel"), 0, "conv"),
        (("conv2d", "bias"), 18, "conv"),
        (("conv2d_1", "kernel"), 20, "conv"),
        (("conv2d_1", "bias"), 56, "conv"),
        (("dense", "kernel"), 58, "fc"),
        (("dense", "bias"), 78, "fc"),
    ]
    params = zoo.params([(member + 1) % 3, member], snapshot=3)
    assert params["conv2d"]["kernel"].shape == (2, 3, 3, 1, 2)
    np.testing.assert_array_equal(params["dense"]["kernel"][1], weights[row, 68:88].reshape(2, 10))
    np.testing.assert_array_equal(params["conv2d_1"]["bias"][1], weights[row, 20:22])
    with pytest.raises(ZooError, match="network 0: .*fit no architecture") as err:
        zoo.architecture(0)
    one_line(err)


def test_networks_without_modeldir_group_by_config_and_folders_combine(folder, tmp_path):
    path, _ = folder
    frame = pd.read_csv(path / "metrics.csv.gz").drop(columns=["modeldir"])
    frame.to_csv(path / "metrics.csv.gz", index=False)
    write_small_zoo(tmp_path / "cifar10", seed=1, dataset="cifar10")
    zoo = smallcnnzoo.open([path, tmp_path / "cifar10"])
    assert list(zoo.members.index) == list(range(6))
    assert list(zoo.members.dataset) == ["mnist"] * 3 + ["cifar10"] * 3
    assert zoo.flat(list(range(6)), snapshot=1).shape == (6, WIDTH)
    assert len(zoo.info["left_out"]) == 2
    crashed = smallcnnzoo.open(path, snapshots=2)
    assert len(crashed.members) == 1 and crashed.members["config.activation"].iloc[0] == "selu"


def test_missing_files_and_columns(folder):
    path, _ = folder
    layout = pd.read_csv(path / "layout.csv", index_col=0)
    layout.drop(columns=["shape"]).to_csv(path / "layout.csv")
    with pytest.raises(ZooError, match="shape missing") as err:
        smallcnnzoo.open(path)
    one_line(err)
    layout.assign(end_idx=layout.end_idx + np.arange(len(layout))).to_csv(path / "layout.csv")
    with pytest.raises(ZooError, match="variable sequential/conv2d/kernel:0") as err:
        smallcnnzoo.open(path)
    one_line(err)
    layout.to_csv(path / "layout.csv")
    metrics = pd.read_csv(path / "metrics.csv.gz")
    metrics.drop(columns=["step"]).to_csv(path / "metrics.csv.gz", index=False)
    with pytest.raises(ZooError, match="step missing"):
        smallcnnzoo.open(path)
    metrics.iloc[:-1].to_csv(path / "metrics.csv.gz", index=False)
    with pytest.raises(ZooError, match="must match row by row"):
        smallcnnzoo.open(path)
    (path / "weights.npy").unlink()
    with pytest.raises(ZooError, match="weights.npy"):
        smallcnnzoo.open(path)
    with pytest.raises(ZooError, match="no such folder"):
        smallcnnzoo.open(path.parent / "svhn")
    with pytest.raises(ConfigError):
        smallcnnzoo.open(path, order="tf")


def test_a_network_whose_checkpoints_disagree_is_named(folder):
    path, metrics = folder
    frame = pd.read_csv(path / "metrics.csv.gz")
    frame.loc[frame.modeldir == "/cns/zoo/mnist/run1", "config.dropout"] = [0.1, 0.2, 0.1, 0.1]
    frame.to_csv(path / "metrics.csv.gz", index=False)
    with pytest.raises(ZooError, match=r"network /cns/zoo/mnist/run1: .*config\.dropout") as err:
        smallcnnzoo.open(path)
    one_line(err)
