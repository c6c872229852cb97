"""Writers of public-format zoo files for tests, with plain numpy and pandas (no nwsjax code).

* NWS (Eilertsen et al. 2020): :func:`write_nws_network` writes one network's folder
  (``weights/NNN.bin``, ``error.bin``, ``stat.bin``, raw float64), :func:`write_nws_lists`
  the train/test CSVs.
* Small CNN Zoo (Unterthiner et al. 2020): :func:`write_layout` writes ``layout.csv``,
  :func:`write_small_cnn_zoo` a whole dataset folder.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pandas as pd

# The columns of the released NWS lists, in order.
NWS_COLUMNS = [
    "dataset", "lrate", "batch_size", "batch_norm", "augmentation", "optimizer", "activation", "initialization",
    "filter_size", "depth_conv", "depth_fc", "width_conv", "width_fc", "weightn_conv", "weightn_fc", "path",
]


def write_nws_network(folder: pathlib.Path, vectors, errors, stat) -> None:
    """One network's folder.

    Args:
      vectors: ``[K, n]`` flat vectors in NWS order, written as ``weights/001.bin`` ... (float64).
      errors: ``[rows, 5]``: step, train, validation, test, smoothed validation error (%), one row per export.
      stat: ``[4]``: number of exports, steps, epochs, seconds.
    """
    (folder / "weights").mkdir(parents=True)
    for k, vector in enumerate(np.asarray(vectors, np.float64), start=1):
        vector.tofile(folder / "weights" / f"{k:03d}.bin")
    np.asarray(errors, np.float64).tofile(folder / "error.bin")
    np.asarray(stat, np.float64).tofile(folder / "stat.bin")


def write_nws_lists(root: pathlib.Path, rows: dict[str, list[dict]], stem: str = "nws") -> dict[str, pathlib.Path]:
    """``<stem>_<split>.csv`` per split with the released columns (header row, no index).

    Args:
      rows: ``{split: [row, ...]}``, each row a dict with the keys of :data:`NWS_COLUMNS`.

    Returns:
      ``{split: csv path}``.
    """
    paths = {}
    for split, split_rows in rows.items():
        paths[split] = root / f"{stem}_{split}.csv"
        pd.DataFrame(split_rows, columns=NWS_COLUMNS).to_csv(paths[split], index=False)
    return paths


def write_layout(folder: pathlib.Path, variables: list[tuple[str, tuple]]) -> None:
    """layout.csv for ``(varname, shape)`` variables stored one after another (with its index column,
    as the released files have, which readers ignore)."""
    starts = np.cumsum([0] + [int(np.prod(s)) for _, s in variables])
    pd.DataFrame(
        {
            "varname": [v for v, _ in variables],
            "start_idx": starts[:-1],
            "end_idx": starts[1:],
            "shape": [str(s) for _, s in variables],
        }
    ).to_csv(folder / "layout.csv")


def write_small_cnn_zoo(folder: pathlib.Path, variables: list[tuple[str, tuple]], networks: list[dict]) -> None:
    """A Small CNN Zoo dataset folder: weights.npy, layout.csv, metrics.csv.gz.

    Args:
      variables: ``(varname, shape)`` in stored order.
      networks: per network ``{"config": {"config.x": value, ...}, "weights": [K, n] stored rows,
        "test_accuracy": [K]}``; checkpoint ``k`` gets step ``k``, rows network by network.
    """
    folder.mkdir(parents=True)
    write_layout(folder, variables)
    records, rows = [], []
    for n, network in enumerate(networks):
        for k, weights in enumerate(network["weights"]):
            records.append({**network["config"], "modeldir": f"/zoo/run{n}", "step": k,
                            "test_accuracy": network["test_accuracy"][k], "train_accuracy": 0.5,
                            "test_loss": 1.0, "train_loss": 1.0})
            rows.append(weights)
    np.save(folder / "weights.npy", np.asarray(rows, np.float32))
    pd.DataFrame(records).to_csv(folder / "metrics.csv.gz", index=False)
