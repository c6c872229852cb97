"""The Small CNN Zoo (Unterthiner et al. 2020): read it as a zoo, write our zoos in it.

Layout, one folder per dataset (e.g. ``mnist/``)::

    weights.npy       [checkpoints, n_weights]: one flattened checkpoint per row
    layout.csv        one row per variable: varname (``sequential/conv2d/kernel:0``),
                      start_idx, end_idx (its columns in weights.npy), shape
                      (``(3, 3, 1, 16)``, TensorFlow layout: [k, k, in, out] / [in, out])
    metrics.csv.gz    one row per checkpoint, row i describing weights.npy row i:
                      ``config.*`` hyper-parameters (optimizer, activation, w_init,
                      learning_rate, l2reg, dropout, train_fraction, ...), modeldir
                      (the training run), step, train/test accuracy and loss

:func:`open` groups the checkpoints into networks (by ``member``, else ``modeldir``,
else all ``config.*`` columns), orders each network's checkpoints by step (its
snapshots) and presents them with the API of :class:`nwsjax.zoo.Zoo`. By default
``flat`` gives vectors in the NWS order (layer by layer: kernel grouped by output
unit, then the layer's other variables), ``order="stored"`` the rows as stored.
:func:`export` writes one of our zoos in this layout. docs/formats.md has the details.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from nwsjax.errors import ConfigError, ZooError
from nwsjax.formats.common import (
    FileZoo,
    check_columns,
    export_history,
    infer_architecture,
    member_ids,
    snapshot_exports_of,
)
from nwsjax.layout import MOVING_STATS, Segment, unflatten
from nwsjax.space import PROPERTY_NAMES
from nwsjax.zoo import check_ids, check_snapshot

__all__ = [
    "LAYOUT_COLUMNS",
    "CONFIG_NAMES",
    "Variable",
    "read_layout",
    "arrange",
    "SmallCNNZoo",
    "open",
    "export",
]

LAYOUT_COLUMNS = ("varname", "start_idx", "end_idx", "shape")
# metrics.csv.gz column -> our members/curves name
METRICS = {
    "train_accuracy": "train_acc",
    "val_accuracy": "val_acc",
    "test_accuracy": "test_acc",
    "train_loss": "train_loss",
    "test_loss": "test_loss",
}
# our property -> the config column our exporter writes (the zoo's own name where it has one)
_ZOO_NAMES = {"lrate": "learning_rate", "initialization": "w_init"}
CONFIG_NAMES = {name: f"config.{_ZOO_NAMES.get(name, name)}" for name in PROPERTY_NAMES}
# Fixed settings of our family, written for completeness of the config columns.
FIXED_CONFIG = {
    "config.dnn_architecture": "nws",
    "config.b_init": "zeros",
    "config.dropout": 0.5,
    "config.l2reg": 0.0,
    "config.train_fraction": 1.0,
}
# Keras batch-norm names -> Flax (moving statistics: Flax's batch_stats names)
_FLAX_NAMES = {"gamma": "scale", "beta": "bias", "moving_mean": "mean", "moving_variance": "var"}
# A layer's variables in NWS order: kernel, bias; batch norm beta, gamma, moving mean, variance
_NWS_RANK = {"kernel": 0, "bias": 1, "scale": 2, "mean": 3, "var": 4}


@dataclasses.dataclass(frozen=True)
class Variable:
    """One row of layout.csv: a variable's place in a stored weights.npy row.

    Attributes:
      layer: the variable's layer (``conv2d_1`` of ``sequential/conv2d_1/kernel:0``).
      name: its name in the layer (``kernel``; Keras ``gamma``/``beta`` become
        ``scale``/``bias`` as in Flax, ``moving_mean``/``moving_variance`` ``mean``/``var``).
      shape: its shape (TensorFlow/Flax layout).
      start: its first column in weights.npy.
    """

    layer: str
    name: str
    shape: tuple[int, ...]
    start: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))


def _parse_shape(text) -> tuple[int, ...]:
    value = ast.literal_eval(str(text).strip())
    shape = (value,) if isinstance(value, int) else tuple(value)
    if not all(isinstance(d, int) and d >= 0 for d in shape):
        raise ValueError(text)
    return shape


def _split_varname(varname: str) -> tuple[str, str]:
    parts = re.sub(r":\d+$", "", str(varname)).split("/")
    name = parts[-1]
    layer = parts[-2] if len(parts) > 1 else name
    return layer, _FLAX_NAMES.get(name, name)


def read_layout(path: Path, width: int) -> list[Variable]:
    """Reads layout.csv: the variables of a weights.npy row of ``width`` columns, by start.

    Raises ZooError naming the file and variable when a column is missing, a shape
    does not parse or does not match ``end_idx - start_idx``, or a variable lies
    outside the row.
    """
    if not path.is_file():
        raise ZooError(f"{path}: missing; a Small CNN Zoo folder needs layout.csv next to weights.npy")
    try:
        frame = pd.read_csv(path)
    except Exception as err:  # pandas raises several types for malformed files
        raise ZooError(f"{path}: unreadable as CSV ({err.__class__.__name__}); restore layout.csv") from None
    check_columns(frame, LAYOUT_COLUMNS, str(path), f"layout.csv needs {', '.join(LAYOUT_COLUMNS)}")
    variables = []
    for row in frame.itertuples(index=False):
        try:
            shape = _parse_shape(row.shape)
            start, end = int(row.start_idx), int(row.end_idx)
        except (ValueError, SyntaxError, TypeError):
            problem = f"{path}: variable {row.varname}: unreadable shape or indices"
            raise ZooError(f"{problem}; fix layout.csv") from None
        if end - start != int(np.prod(shape)) or start < 0 or end > width:
            raise ZooError(
                f"{path}: variable {row.varname}: columns {start}..{end} do not hold shape {shape} inside "
                f"rows of {width} weights; fix layout.csv"
            )
        variables.append(Variable(*_split_varname(row.varname), shape, start))
    return sorted(variables, key=lambda v: v.start)


def _unit_major(indices: np.ndarray, name: str) -> np.ndarray:
    """Column indices of one variable in NWS order (kernels grouped by output unit)."""
    if name == "kernel" and indices.ndim == 4:  # [k, k, in, out] -> [out, in, k, k]
        indices = indices.transpose(3, 2, 0, 1)
    elif name == "kernel" and indices.ndim == 2:  # [in, out] -> [out, in]
        indices = indices.T
    return indices.ravel()


def arrange(variables: Sequence[Variable], order: str) -> tuple[list[Segment], np.ndarray | None]:
    """Where each variable lies in the vectors ``flat`` returns.

    Args:
      variables: a folder's variables (:func:`read_layout`).
      order: ``"nws"``: layers in stored order, inside a layer the kernel first (grouped
        by output unit: for each output channel, each input channel, the k x k taps),
        then the bias, then batch norm's beta, gamma, moving mean and variance (the
        released NWS order), then any other variables in stored order; ``"stored"``:
        as in weights.npy.

    Returns:
      ``(segments, permutation)``: segments with offsets into the returned vectors and
      ``part`` "conv" (layers with a 4-D kernel, and the kernel-less layers after one)
      or "fc"; ``permutation`` int64 [n] such that ``vector = stored_row[permutation]``
      (None for ``"stored"``).
    """
    layers: dict[str, list[Variable]] = {}
    for variable in variables:
        layers.setdefault(variable.layer, []).append(variable)
    part, parts = "conv", {}
    for name, members in layers.items():
        kernels = [v for v in members if v.name == "kernel"]
        if kernels:
            part = "conv" if len(kernels[0].shape) == 4 else "fc"
        parts[name] = part
    if order == "stored":
        segments = [Segment((v.layer, v.name), v.shape, v.start, parts[v.layer]) for v in variables]
        return segments, None
    segments, pieces, offset = [], [], 0
    for name, members in layers.items():
        for variable in sorted(members, key=lambda v: _NWS_RANK.get(v.name, len(_NWS_RANK))):  # stable
            segments.append(Segment((name, variable.name), variable.shape, offset, parts[name]))
            columns = np.arange(variable.start, variable.start + variable.size).reshape(variable.shape)
            pieces.append(_unit_major(columns, variable.name))
            offset += variable.size
    return segments, np.concatenate(pieces) if pieces else np.zeros(0, np.int64)


@dataclasses.dataclass
class _Folder:
    """One dataset folder: its weights (memory-mapped), variables and arrangement."""

    path: Path
    weights: np.ndarray
    variables: list[Variable]
    segments: list[Segment]
    permutation: np.ndarray | None


def _read_metrics(folder: Path, rows: int) -> pd.DataFrame:
    path = next((folder / n for n in ("metrics.csv.gz", "metrics.csv") if (folder / n).is_file()), None)
    if path is None:
        raise ZooError(f"{folder}: metrics.csv.gz missing; a Small CNN Zoo folder needs it")
    try:
        frame = pd.read_csv(path, float_precision="round_trip")
    except Exception as err:  # pandas raises several types for malformed files
        raise ZooError(f"{path}: unreadable as CSV ({err.__class__.__name__}); restore the file") from None
    frame = frame.rename(columns={"Unnamed: 0": "checkpoint"})
    check_columns(frame, ["step"], str(path), "it needs one row per checkpoint with its training step")
    if len(frame) != rows:
        raise ZooError(
            f"{path}: {len(frame)} rows for {rows} rows of weights.npy; the two files must match row by row"
        )
    return frame


def _read_folder(path: Path, order: str) -> tuple[_Folder, pd.DataFrame]:
    if not path.is_dir():
        raise ZooError(
            f"{path}: no such folder; pass a Small CNN Zoo dataset folder "
            "(weights.npy, layout.csv, metrics.csv.gz)"
        )
    weights_path = path / "weights.npy"
    if not weights_path.is_file():
        raise ZooError(f"{weights_path}: missing; a Small CNN Zoo folder needs weights.npy")
    try:
        weights = np.load(weights_path, mmap_mode="r")
    except (OSError, ValueError) as err:
        raise ZooError(f"{weights_path}: unreadable ({err.__class__.__name__}); restore the file") from None
    if weights.ndim != 2:
        raise ZooError(f"{weights_path}: shape {weights.shape}, not [checkpoints, weights]; restore the file")
    variables = read_layout(path / "layout.csv", weights.shape[1])
    segments, permutation = arrange(variables, order)
    return _Folder(path, weights, variables, segments, permutation), _read_metrics(path, weights.shape[0])


def _network_key(metrics: pd.DataFrame, where: str) -> list[str]:
    for column in ("member", "modeldir"):
        if column in metrics.columns:
            return [column]
    config = [c for c in metrics.columns if c.startswith("config.")]
    if not config:
        raise ZooError(f"{where}: no member, modeldir or config.* columns; cannot tell the networks apart")
    return config


def _check_config(metrics: pd.DataFrame, key: list[str], where: str) -> None:
    """Every checkpoint of one network must share its config values."""
    config = [c for c in metrics.columns if c.startswith("config.") and c not in key]
    if not config:
        return
    counts = metrics.groupby(key, sort=False, dropna=False)[config].nunique(dropna=False)
    bad = counts[(counts > 1).any(axis=1)]
    if len(bad):
        network = bad.index[0]
        column = bad.columns[(bad.iloc[0] > 1).to_numpy()][0]
        raise ZooError(f"{where}: network {network}: its checkpoints disagree on {column}; fix the file")


def _config_props(row: pd.Series) -> dict:
    """Our property names -> a member's values from the config columns our exporter writes."""
    return {name: row.get(CONFIG_NAMES[name]) for name in PROPERTY_NAMES}


class SmallCNNZoo(FileZoo):
    """Small CNN Zoo folders as one zoo (see :func:`open`).

    ``members``: one row per network: its ``config.*`` columns under their own names,
    ``network`` (its modeldir or grouping key), ``folder``, ``dataset``,
    ``checkpoints``, ``weightn_conv`` / ``weightn_fc``, and train_acc, test_acc,
    train_loss, test_loss of its last checkpoint. ``properties`` lists the
    ``config.*`` columns. ``curves``: one row per member and checkpoint.
    """

    def __init__(self, path, info, members, num_snapshots, folders, rows, curves):
        super().__init__(path, info, members, num_snapshots)
        self._folders = folders
        self._rows = rows  # member -> (folder index, int64 [K] weights.npy rows)
        self._curves = curves

    @property
    def properties(self) -> tuple[str, ...]:
        return tuple(c for c in self.members.columns if c.startswith("config."))

    def _read_curves(self) -> pd.DataFrame:
        return self._curves

    def _stored(self, member: int, snapshot: int) -> np.ndarray:
        folder, rows = self._rows[member]
        return np.asarray(self._folders[folder].weights[rows[snapshot - 1]], dtype=np.float32)

    def _vector(self, member: int, snapshot: int) -> np.ndarray:
        row = self._stored(member, snapshot)
        permutation = self._folders[self._rows[member][0]].permutation
        return row if permutation is None else row[permutation]

    def _props(self, member: int):
        return _config_props(self.members.loc[member])

    def layout(self, member: int) -> list[Segment]:
        """Where each variable of ``member`` sits in the vectors :meth:`flat` returns."""
        member = check_ids(self.members, [member])[0]
        return list(self._folders[self._rows[member][0]].segments)

    def _tree(self, ids, snapshot: int | None, collection: str) -> dict[str, dict[str, np.ndarray]]:
        """The variables of ``collection`` (``"params"`` or ``"batch_stats"``) of ``ids``, stacked."""
        snapshot = check_snapshot(snapshot, self.num_snapshots)
        ids = check_ids(self.members, ids)
        layouts = {tuple(self._folders[self._rows[i][0]].variables) for i in ids}
        if len(layouts) > 1:
            raise ZooError("members have different layouts; select ids of one folder (zoo.members.folder)")
        stored = np.stack([self._stored(i, snapshot) for i in ids])
        tree: dict[str, dict[str, np.ndarray]] = {}
        for v in layouts.pop():
            if (v.name in MOVING_STATS) == (collection == "batch_stats"):
                array = stored[:, v.start : v.start + v.size].reshape(len(ids), *v.shape)
                tree.setdefault(v.layer, {})[v.name] = array
        return tree

    def params(self, ids, snapshot: int | None = None):
        """Stacked params trees of ``ids`` (one layout) at ``snapshot`` (default K).

        Returns:
          ``{layer: {name: float32 [len(ids), *shape]}}`` with the layers and names of
          layout.csv (TensorFlow/Flax layout; Keras ``gamma``/``beta`` as ``scale``/``bias``),
          the moving statistics left out (:meth:`batch_stats`).
        """
        return self._tree(ids, snapshot, "params")

    def batch_stats(self, ids, snapshot: int | None = None):
        """The batch-norm moving statistics (``mean``, ``var``) stored in layout.csv, shaped like
        :meth:`params`; ``{}`` when the networks have none."""
        return self._tree(ids, snapshot, "batch_stats")


def open(folders, *, snapshots: int | None = None, order: str = "nws") -> SmallCNNZoo:  # noqa: A001
    """Opens Small CNN Zoo dataset folders as one zoo with the API of :class:`nwsjax.zoo.Zoo`.

    Args:
      folders: one folder or several (e.g. ``mnist/``, ``cifar10/``).
      snapshots: K; networks with another number of checkpoints are left out (the
        released zoo has runs that crashed early), listed in ``info["left_out"]``.
        Default: the most common number of checkpoints (9 in the released zoo).
      order: ``"nws"`` (default) or ``"stored"``, the order of ``flat`` vectors (see
        :func:`arrange`).

    Returns:
      the zoo; member ids are the ``member`` column when metrics.csv.gz has one (our
      exports), else 0..N-1 in order of the networks' first checkpoints.

    weights.npy is memory-mapped: ``flat`` reads only the rows asked for. Raises
    ZooError (one line) for a missing file or column, files that disagree on their
    rows, or a network whose checkpoints disagree on a config value.
    """
    if order not in ("nws", "stored"):
        raise ConfigError(f"order={order!r}: choose 'nws' or 'stored'")
    paths = [Path(folders)] if isinstance(folders, (str, os.PathLike)) else [Path(f) for f in folders]
    if not paths:
        raise ConfigError("no folder given; pass Small CNN Zoo dataset folders")
    loaded = [_read_folder(p, order) for p in paths]
    grouped = [_networks(folder, metrics) for folder, metrics in loaded]
    counts = pd.Series([len(rows) for networks in grouped for _, rows in networks], dtype=np.int64)
    k = int(counts.value_counts().idxmax()) if snapshots is None else int(snapshots)
    if k < 1:
        raise ConfigError(f"snapshots={snapshots}: need at least 1")
    left_out, frames, curves, rows = _with_k_checkpoints(loaded, grouped, k)
    if not rows:
        raise ZooError(f"no network has {k} checkpoints; pass snapshots= one of {sorted(set(counts))}")
    members = pd.concat(frames, ignore_index=True)
    ids = member_ids(members, ", ".join(str(p) for p in paths))
    members = members.drop(columns=[c for c in ["member"] if c in members.columns])
    members.index = pd.Index(ids, name="member")
    archs = [
        infer_architecture(_config_props(row), row["weightn_conv"], row["weightn_fc"])
        for _, row in members.iterrows()
    ]
    members["architecture"] = pd.array([a.label() if a else None for a in archs], dtype="str")
    curves_frame = pd.concat(curves, ignore_index=True)
    curves_frame.insert(0, "member", np.repeat(ids, k))
    info = {"format": "smallcnnzoo", "folders": [str(p) for p in paths], "order": order, "left_out": left_out}
    return SmallCNNZoo(
        paths[0],
        info,
        members.sort_index(),
        k,
        [folder for folder, _ in loaded],
        dict(zip(ids.tolist(), rows)),
        curves_frame.sort_values(["member", "snapshot"], kind="stable", ignore_index=True),
    )


def _with_k_checkpoints(loaded: list, grouped: list, k: int) -> tuple[list, list, list, list]:
    """The networks with ``k`` checkpoints, folder by folder: ``(left_out, member frames,
    curve frames, (folder index, weights rows) per network)``; the others are left out."""
    left_out, frames, curves, rows = [], [], [], []
    for index, ((folder, metrics), networks) in enumerate(zip(loaded, grouped)):
        left_out += [
            {"folder": str(folder.path), "network": str(key), "checkpoints": len(r)}
            for key, r in networks
            if len(r) != k
        ]
        kept = [(key, r) for key, r in networks if len(r) == k]
        if kept:
            frames.append(_members_of(folder, metrics, kept))
            curves.append(_curves_of(metrics, kept))
            rows += [(index, r) for _, r in kept]
    return left_out, frames, curves, rows


def _networks(folder: _Folder, metrics: pd.DataFrame) -> list[tuple]:
    """A folder's networks in order of first checkpoint: ``(key, weights rows sorted by step)``."""
    where = str(folder.path / "metrics.csv.gz")
    key = _network_key(metrics, where)
    _check_config(metrics, key, where)
    steps = pd.to_numeric(metrics["step"], errors="coerce").to_numpy()
    networks = []
    for name, rows in metrics.groupby(key, sort=False, dropna=False).indices.items():
        name = name[0] if len(key) == 1 and isinstance(name, tuple) else name
        networks.append((name, rows[np.argsort(steps[rows], kind="stable")]))
    return networks


def _members_of(folder: _Folder, metrics: pd.DataFrame, kept: list[tuple]) -> pd.DataFrame:
    """Members-table rows of a folder's kept networks: config of the first checkpoint, metrics of the last."""
    first = metrics.iloc[[rows[0] for _, rows in kept]].reset_index(drop=True)
    last = metrics.iloc[[rows[-1] for _, rows in kept]].reset_index(drop=True)
    columns = [c for c in metrics.columns if c.startswith("config.") or c == "member"]
    frame = first[columns].copy()
    frame["network"] = [str(key) for key, _ in kept]
    frame["folder"] = str(folder.path)
    frame["dataset"] = first["config.dataset"] if "config.dataset" in first else folder.path.name
    frame["checkpoints"] = [len(rows) for _, rows in kept]
    for part in ("conv", "fc"):
        frame[f"weightn_{part}"] = sum(s.size for s in folder.segments if s.part == part)
    for theirs, ours in METRICS.items():
        if theirs in last:
            frame[ours] = last[theirs]
    return frame


def _curves_of(metrics: pd.DataFrame, kept: list[tuple]) -> pd.DataFrame:
    """One row per checkpoint of the kept networks, in order: snapshot, step and the metric columns."""
    keep = [c for c in ["checkpoint", "step", *METRICS] if c in metrics.columns]
    frame = metrics.iloc[np.concatenate([rows for _, rows in kept])][keep].reset_index(drop=True)
    frame.insert(0, "snapshot", np.tile(np.arange(1, len(kept[0][1]) + 1), len(kept)))
    return frame


# -- writing -----------------------------------------------------------------------------


def _folder_name(dataset, label: str, several: bool) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(dataset)) or "dataset"
    return f"{name}-{label}" if several else name


def _layout_label(zoo, member: int) -> str:
    """The architecture label of ``member``, ``-nostats`` added when its vector leaves out
    the batch-norm moving statistics: members of one label share one layout."""
    arch = zoo.architecture(member)
    dropped = arch.batch_norm and not zoo.moving_stats(member)
    return arch.label() + ("-nostats" if dropped else "")


def export(zoo, out_dir: str | os.PathLike) -> list[Path]:
    """Writes ``zoo`` in the Small CNN Zoo layout, one folder per dataset.

    A dataset whose members have several architectures gets one folder per
    architecture (``<dataset>-<architecture label>``), as weights.npy is a matrix.
    Rows are members in id order, each with its K snapshots in order. Variables
    are written in the order of the member's flat vector (``zoo.layout``): layer by
    layer, kernel, bias, then batch-norm offset, scale, and moving mean and variance
    where the vector holds them; kernels in TensorFlow/Flax layout; layout.csv names
    them ``<layer>/<name>:0`` with Flax's names (``scale``, ``bias``, ``mean``, ``var``).
    metrics.csv.gz has the properties as ``config.*`` columns
    (:data:`CONFIG_NAMES`, option names, not indices), :data:`FIXED_CONFIG`,
    ``config.num_classes``, ``config.random_seed`` (the member seed), ``member``,
    ``modeldir``, ``step`` (training steps at the snapshot), train/val/test accuracy
    and train/test loss (NaN where not recorded, e.g. at initialization).

    Args:
      zoo: a zoo whose members have the 13 properties and an architecture of our
        family (ours, or an NWS zoo opened with :func:`nwsjax.formats.nws.open`).
      out_dir: the folder to write the dataset folders into (created).

    Returns:
      the dataset folders written.
    """
    out = Path(out_dir)
    members = zoo.members
    check_columns(members, PROPERTY_NAMES, "zoo.members", "export needs the 13 properties")
    labels = pd.Series({m: _layout_label(zoo, m) for m in members.index}, dtype=object)
    curves = zoo.curves
    by_member = dict(tuple(curves.groupby("member"))) if len(curves) else {}
    written = []
    for dataset, ids in members.groupby("dataset", sort=True).groups.items():
        groups = labels[ids].groupby(labels[ids], sort=True)
        for label, arch_ids in groups.groups.items():
            folder = out / _folder_name(dataset, label, groups.ngroups > 1)
            folder.mkdir(parents=True, exist_ok=True)
            _write_folder(zoo, folder, sorted(arch_ids), by_member)
            written.append(folder)
    return written


def _write_folder(zoo, folder: Path, ids: list[int], by_member: dict) -> None:
    arch, segments = zoo.architecture(ids[0]), zoo.layout(ids[0])
    pd.DataFrame(
        {
            "varname": [f"{s.path[0]}/{s.path[1]}:0" for s in segments],
            "start_idx": [s.offset for s in segments],
            "end_idx": [s.offset + s.size for s in segments],
            "shape": [str(tuple(s.shape)) for s in segments],
        }
    ).to_csv(folder / "layout.csv", index=False)
    k = zoo.num_snapshots
    n = segments[-1].offset + segments[-1].size
    shape = (len(ids) * k, n)
    weights = np.lib.format.open_memmap(folder / "weights.npy", mode="w+", dtype=np.float32, shape=shape)
    rows = []
    for index, member in enumerate(ids):
        record = zoo.members.loc[member]
        history = export_history(by_member.get(member), record)
        exports = snapshot_exports_of(record, len(history), k)
        config = {CONFIG_NAMES[name]: record[name] for name in PROPERTY_NAMES}
        config.update(FIXED_CONFIG, **{"config.num_classes": arch.num_classes})
        if "seed" in record:
            config["config.random_seed"] = record["seed"]
        for snapshot in range(1, k + 1):
            vector = np.asarray(zoo.flat([member], snapshot=snapshot)[0])
            trees = dict(zip(("params", "batch_stats"), unflatten(vector, arch)))
            stored = [trees[s.collection][s.path[0]][s.path[1]].ravel() for s in segments]
            weights[index * k + snapshot - 1] = np.concatenate(stored)
            at = history.iloc[min(int(exports[snapshot - 1]), len(history)) - 1]
            rows.append(
                {
                    **config,
                    "member": int(member),
                    "modeldir": f"member-{member:06d}",
                    "step": int(at["steps"]) if pd.notna(at["steps"]) else -1,
                    "train_accuracy": at["train_acc"],
                    "val_accuracy": at["val_acc"],
                    "test_accuracy": at["test_acc"],
                    "train_loss": at["train_loss"],
                    "test_loss": at["test_loss"],
                }
            )
    weights.flush()
    del weights
    pd.DataFrame(rows).to_csv(folder / "metrics.csv.gz", index=False)
