"""The released NWS dataset (Eilertsen et al. 2020): read it as a zoo, write our zoos in it.

Layout (reference, "On-disk layout of the released NWS dataset")::

    <split>.csv         one row per network: dataset, lrate, batch_size, batch_norm,
                        augmentation, optimizer, activation, initialization, filter_size,
                        depth_conv, depth_fc, width_conv, width_fc, weightn_conv,
                        weightn_fc, path (the network's folder, absolute or relative
                        to the CSV); our exporter adds a trailing ``member`` column
    <path>/weights/001.bin ... <K>.bin
                        snapshot k: the whole flat vector (NWS order), raw float64:
                        every layer's kernel, bias, batch-norm beta, gamma, moving
                        mean and variance, a 20-wide output layer; vectors without
                        the moving statistics or with another output width are read
                        too (:func:`nwsjax.formats.common.infer_architecture`)
    <path>/error.bin    raw float64 rows of 5 per export: step, train error %,
                        validation error %, test error %, smoothed validation error %
    <path>/stat.bin     raw float64: number of exports, steps, epochs, seconds

:func:`open` presents the CSVs as a zoo with the API of :class:`nwsjax.zoo.Zoo`;
:func:`export` writes one of our zoos in this layout. docs/formats.md has the details.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nwsjax.errors import ConfigError, ZooError
from nwsjax.formats.common import (
    FileZoo,
    check_columns,
    export_history,
    infer_architecture,
    member_ids,
    switch_value,
)
from nwsjax.layout import moving_stats_of
from nwsjax.space import PROPERTIES, PROPERTY_NAMES

__all__ = ["CSV_COLUMNS", "ERROR_COLUMNS", "NWSZoo", "open", "export"]

CSV_COLUMNS: tuple[str, ...] = (*PROPERTY_NAMES, "weightn_conv", "weightn_fc", "path")
ERROR_COLUMNS = ("step", "train_error", "val_error", "test_error", "smoothed_val_error")
INDEXED = ("optimizer", "activation", "initialization")  # stored as option indices
SWITCHES = ("batch_norm", "augmentation")  # stored as False/True
SPLITS = ("train", "test")


def _option(name: str, value: Any) -> Any:
    """A categorical CSV value as our option name; values it does not know, as found."""
    if name in SWITCHES:
        return switch_value(value)
    options = PROPERTIES[name].options
    if isinstance(value, str):
        return next((o for o in options if str(o).lower() == value.strip().lower()), value)
    number = isinstance(value, (int, np.integer, float, np.floating)) and not isinstance(value, bool)
    if name in INDEXED and number and float(value).is_integer() and 0 <= value < len(options):
        return options[int(value)]
    return value


def _encode(name: str, value: Any) -> Any:
    """Our value of property ``name`` as the reference's CSV stores it (inverse of :func:`_option`)."""
    if name in INDEXED and value in PROPERTIES[name].options:
        return PROPERTIES[name].options.index(value)
    if name in SWITCHES and value in ("on", "off"):
        return value == "on"
    return value


def _split_of(path: Path) -> str:
    stem = path.stem.lower()
    for split in ("test", "train"):
        if split in stem:
            return split
    raise ZooError(
        f"{path}: cannot tell whether this is the train or test list; pass {{'train': ..., 'test': ...}}"
    )


def _sources(csv_paths) -> list[tuple[str, Path]]:
    """``(split, csv path)`` pairs from a path, a list of paths or ``{split: path}``."""
    if isinstance(csv_paths, Mapping):
        bad = [s for s in csv_paths if s not in SPLITS]
        if bad:
            raise ConfigError(f"split names {bad} are not 'train' or 'test'; key the CSV paths by those")
        return [(split, Path(p)) for split, p in csv_paths.items()]
    paths = [csv_paths] if isinstance(csv_paths, (str, os.PathLike)) else list(csv_paths)
    if not paths:
        raise ConfigError("no NWS CSV given; pass the train and test CSV files")
    return [(_split_of(Path(p)), Path(p)) for p in paths]


def _read_list(path: Path, split: str) -> pd.DataFrame:
    """One NWS CSV: its rows, ``path`` resolved, categorical values as our option names."""
    if not path.is_file():
        raise ZooError(f"{path}: no such NWS CSV; pass the train/test lists of the NWS dataset")
    try:
        frame = pd.read_csv(path, float_precision="round_trip")
    except Exception as err:  # pandas raises several types for malformed files
        problem = err.__class__.__name__
        raise ZooError(f"{path}: unreadable as CSV ({problem}); pass an NWS train/test list") from None
    check_columns(frame, CSV_COLUMNS, str(path), f"an NWS list has the columns {', '.join(CSV_COLUMNS)}")
    for column in ("weightn_conv", "weightn_fc"):
        values = pd.to_numeric(frame[column], errors="coerce")
        if values.isna().any() or (values < 0).any():
            row = int(np.flatnonzero((values.isna() | (values < 0)).to_numpy())[0])
            value = frame[column].iloc[row]
            raise ZooError(f"{path}: line {row + 2} has {column}={value!r}; it must be a count of weights")
        frame[column] = values.astype(np.int64)
    base = path.parent.absolute()
    frame["path"] = [os.path.normpath(base / str(p)) for p in frame["path"]]
    for name in PROPERTY_NAMES:
        if name != "lrate" and name != "dataset":
            frame[name] = pd.Series([_option(name, v) for v in frame[name].tolist()], index=frame.index)
    frame["split"] = split
    return frame


def _architecture_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """``num_classes`` (output units), ``moving_stats`` (whether the vectors hold the batch-norm
    moving statistics) and ``architecture`` label per row (NA where the lengths fit no architecture)."""
    records = frame.to_dict("records")
    archs = [infer_architecture(row, row["weightn_conv"], row["weightn_fc"]) for row in records]
    lengths = [r["weightn_conv"] + r["weightn_fc"] for r in records]
    stats = [moving_stats_of(a, n) if a else None for a, n in zip(archs, lengths)]
    return pd.DataFrame(
        {
            "num_classes": pd.array([a.num_classes if a else None for a in archs], dtype="Int64"),
            "moving_stats": pd.array(stats, dtype="boolean"),
            "architecture": pd.array([a.label() if a else None for a in archs], dtype="str"),
        },
        index=frame.index,
    )


class NWSZoo(FileZoo):
    """The NWS dataset's networks as a zoo (see :func:`open`).

    ``members`` holds the CSV columns (categorical values as our option names),
    ``path`` (the absolute network folder), ``split`` ("train"/"test", the CSV the row
    came from), ``num_classes`` (output units: 20 in the released dataset),
    ``moving_stats`` (whether the vectors hold the batch-norm moving statistics, as
    the released ones do) and ``architecture`` (NA when the lengths fit no
    architecture of our family). Reading is lazy: :meth:`flat` reads one .bin file per
    member and snapshot; :attr:`curves` and :attr:`stats` read every network's
    error.bin / stat.bin on first use.
    """

    def _file(self, member: int, name: str) -> Path:
        path = Path(self.members.at[member, "path"]) / name
        if not path.is_file():
            raise ZooError(
                f"network {member} ({self.members.at[member, 'path']}): {name} missing; "
                "restore the network's files or drop its row from the CSV"
            )
        return path

    def _vector(self, member: int, snapshot: int) -> np.ndarray:
        name = f"weights/{snapshot:03d}.bin"
        path = self._file(member, name)
        expected = int(self.members.at[member, "weightn_conv"] + self.members.at[member, "weightn_fc"])
        size = path.stat().st_size
        if size != 8 * expected:
            raise ZooError(
                f"network {member} ({self.members.at[member, 'path']}): {name} holds {size / 8:g} float64 "
                f"values, not weightn_conv + weightn_fc = {expected}; fix the CSV row or restore the file"
            )
        return np.fromfile(path, np.float64).astype(np.float32)

    def _read_float64(self, member: int, name: str, width: int) -> np.ndarray:
        path = self._file(member, name)
        values = np.fromfile(path, np.float64)
        if path.stat().st_size % 8 or len(values) % width or not len(values):
            raise ZooError(
                f"network {member} ({self.members.at[member, 'path']}): {name} is not rows of {width} "
                "float64 values; restore the file"
            )
        return values.reshape(-1, width)

    @functools.cached_property
    def stats(self) -> pd.DataFrame:
        """stat.bin of every member: exports, steps, epochs, seconds; indexed by member."""
        rows = {m: self._read_float64(m, "stat.bin", 4)[0] for m in self.members.index}
        columns = ["exports", "steps", "epochs", "seconds"]
        frame = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
        frame.index.name = "member"
        for column in columns[:3]:
            if np.isfinite(frame[column]).all():
                frame[column] = frame[column].astype(np.int64)
        return frame

    def _read_curves(self) -> pd.DataFrame:
        """error.bin of every member, first ``stat.bin[0]`` rows: one row per member and export.

        Columns: member, export (1 = initialization), epoch (export - 1), steps,
        train_acc, val_acc, test_acc, smoothed_val_acc (fractions: 1 - error % / 100).
        """
        frames = []
        for member in self.members.index:
            errors = self._read_float64(member, "error.bin", len(ERROR_COLUMNS))
            exports = self.stats.at[member, "exports"]
            errors = errors[: int(exports)] if np.isfinite(exports) else errors
            n, steps = len(errors), errors[:, 0]
            frames.append(
                pd.DataFrame(
                    {
                        "member": np.full(n, member),
                        "export": np.arange(1, n + 1),
                        "epoch": np.arange(n),
                        "steps": steps.astype(np.int64) if np.isfinite(steps).all() else steps,
                        "train_acc": 1 - errors[:, 1] / 100,
                        "val_acc": 1 - errors[:, 2] / 100,
                        "test_acc": 1 - errors[:, 3] / 100,
                        "smoothed_val_acc": 1 - errors[:, 4] / 100,
                    }
                )
            )
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _count_snapshots(members: pd.DataFrame) -> int:
    """K: the number of ``weights/NNN.bin`` files of the first network."""
    member = members.index[0]
    folder = Path(members.at[member, "path"]) / "weights"
    if not folder.is_dir():
        raise ZooError(
            f"network {member} ({folder.parent}): no weights folder; fix its CSV path or pass snapshots=K"
        )
    k = sum(1 for p in folder.iterdir() if p.suffix == ".bin" and p.stem.isdigit())
    if k == 0:
        raise ZooError(
            f"network {member} ({folder.parent}): no weights/NNN.bin files; restore them or pass snapshots=K"
        )
    return k


def open(csv_paths, *, snapshots: int | None = None) -> NWSZoo:  # noqa: A001 - the module's reader
    """Opens NWS lists (CSV files) as a zoo with the API of :class:`nwsjax.zoo.Zoo`.

    Args:
      csv_paths: one CSV path, several, or ``{"train": path, "test": path}``. Without
        the mapping, a file's split is read from its name (containing "test" or "train").
      snapshots: K, snapshots per network; default: the number of ``weights/NNN.bin``
        files of the first network (20 in the released dataset).

    Returns:
      the zoo; member ids are the CSVs' ``member`` column when present (our exports),
      else 0..N-1 in the order of the rows, the CSVs taken in the order given.

    Raises ZooError (one line) when a CSV is missing or lacks a column; reading a
    member's files later raises ZooError naming the network when a file is missing or
    its length is not ``weightn_conv + weightn_fc``.
    """
    sources = _sources(csv_paths)
    frames = [_read_list(path, split) for split, path in sources]
    members = pd.concat(frames, ignore_index=True)
    where = ", ".join(str(path) for _, path in sources)
    members.index = pd.Index(member_ids(members, where), name="member")
    members = members.drop(columns=[c for c in ["member"] if c in members.columns])
    members = pd.concat([members, _architecture_columns(members)], axis=1).sort_index()
    if not len(members):
        raise ZooError(f"{where}: no networks listed; pass non-empty NWS lists")
    k = _count_snapshots(members) if snapshots is None else int(snapshots)
    if k < 1:
        raise ConfigError(f"snapshots={snapshots}: need at least 1")
    info = {"format": "nws", "csv": {split: str(path) for split, path in sources}, "snapshots": k}
    return NWSZoo(sources[0][1].parent, info, members, k)


# -- writing -----------------------------------------------------------------------------


def _assign_splits(members: pd.DataFrame, split, seed: int) -> pd.Series:
    """``"train"``/``"test"`` per member id, from the ``split`` argument of :func:`export`."""
    if split is None:
        if "split" in members.columns:
            labels = members["split"].astype(str)
        else:
            labels = pd.Series("train", index=members.index)
    elif isinstance(split, float):
        if not 0 < split < 1:
            raise ConfigError(f"split={split}: a test fraction must lie in (0, 1)")
        shuffled = np.random.default_rng(seed).permutation(members.index.to_numpy())
        test = shuffled[: round(split * len(members))]
        labels = pd.Series(np.where(members.index.isin(test), "test", "train"), index=members.index)
    elif isinstance(split, (Mapping, pd.Series)):
        labels = pd.Series(dict(split) if isinstance(split, Mapping) else split).reindex(members.index)
        if labels.isna().any():
            missing = labels.index[labels.isna()].tolist()
            raise ConfigError(
                f"split has no entry for member ids {missing[:5]}; give every member 'train' or 'test'"
            )
    else:
        raise ConfigError(f"split={split!r}: pass None, a test fraction, or {{member id: 'train' | 'test'}}")
    bad = sorted(set(labels) - set(SPLITS))
    if bad:
        raise ConfigError(f"split values {bad} are not 'train' or 'test'; use those two")
    return labels


def _error_rows(history: pd.DataFrame) -> np.ndarray:
    """error.bin rows [n_exports, 5] from an export history (see :func:`export_history`).

    The smoothed validation error is the history's own when it has one (an imported
    NWS zoo), else the running mean of the validation error over the exports so far.
    """
    val_error = 100 * (1 - history["val_acc"].to_numpy(np.float64))
    smoothed = 100 * (1 - history["smoothed_val_acc"].to_numpy(np.float64))
    if np.isnan(smoothed).all():
        smoothed = pd.Series(val_error).expanding().mean().to_numpy()
    return np.stack(
        [
            history["steps"].to_numpy(np.float64),
            100 * (1 - history["train_acc"].to_numpy(np.float64)),
            val_error,
            100 * (1 - history["test_acc"].to_numpy(np.float64)),
            smoothed,
        ],
        axis=1,
    )


def _stat_row(history: pd.DataFrame, record: pd.Series) -> np.ndarray:
    """stat.bin: (number of exports, steps, epochs, seconds); unknown values NaN."""
    epochs = record.get("epochs")
    if epochs is None or pd.isna(epochs):
        epochs = history["epoch"][history["val_acc"].notna()].max()
    seconds = record.get("seconds")
    return np.array(
        [len(history), history["steps"].iloc[-1], epochs, np.nan if seconds is None else seconds], np.float64
    )


def export(zoo, out_dir: str | os.PathLike, split=None, *, seed: int = 0) -> dict[str, Path]:
    """Writes ``zoo`` in the layout of the released NWS dataset.

    Each member becomes ``out_dir/nets/<member:06d>/`` with ``weights/001.bin`` ..
    ``<K>.bin`` (``zoo.flat`` as float64: for our zoos the released layout, moving
    statistics and a 20-wide output layer included), ``error.bin`` (one row per export; export 1,
    the initialization, which our trainer does not evaluate, has NaN errors) and
    ``stat.bin`` (exports, steps, epochs, seconds; NaN where the zoo does not record
    it). Each split gets ``out_dir/<split>.csv`` with :data:`CSV_COLUMNS` (optimizer,
    activation, initialization as indices, batch_norm and augmentation as True/False,
    paths relative to the CSV) and a trailing ``member`` column.

    Args:
      zoo: a zoo (``members`` with the 13 properties and weightn_conv / weightn_fc,
        ``num_snapshots``, ``flat``, ``curves``): ours, or one opened from a format.
      out_dir: the folder to write (created).
      split: None (the zoo's ``split`` column if it has one, else all "train"), a test
        fraction in (0, 1) drawn with ``seed``, or ``{member id: "train" | "test"}``.

    Returns:
      ``{split: csv path}`` of the CSVs written.
    """
    out = Path(out_dir)
    members = zoo.members
    required = [*PROPERTY_NAMES, "weightn_conv", "weightn_fc"]
    check_columns(members, required, "zoo.members", "export needs them")
    labels = _assign_splits(members, split, seed)
    curves = zoo.curves
    by_member = dict(tuple(curves.groupby("member"))) if len(curves) else {}
    stats = getattr(zoo, "stats", None)  # an NWS zoo keeps exports, steps, epochs, seconds there
    rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for member, record in members.iterrows():
        if isinstance(stats, pd.DataFrame) and member in stats.index:
            record = record.combine_first(stats.loc[member])
        _write_net(zoo, member, record, by_member.get(member), out / "nets" / f"{member:06d}")
        rows[labels[member]].append(_csv_row(member, record))
    written = {}
    for split_name, split_rows in rows.items():
        if split_rows:
            path = out / f"{split_name}.csv"
            pd.DataFrame(split_rows, columns=[*CSV_COLUMNS, "member"]).to_csv(path, index=False)
            written[split_name] = path
    return written


def _write_net(zoo, member: int, record: pd.Series, curves: pd.DataFrame | None, folder: Path) -> None:
    """Writes ``member``'s folder: ``weights/<k>.bin`` for every snapshot, ``error.bin``, ``stat.bin``.

    ``record``: its members-table row; ``curves``: its rows of ``zoo.curves`` (None: none).
    """
    (folder / "weights").mkdir(parents=True, exist_ok=True)
    expected = int(record["weightn_conv"] + record["weightn_fc"])
    for k in range(1, zoo.num_snapshots + 1):
        vector = np.asarray(zoo.flat([member], snapshot=k)[0], np.float64)
        if len(vector) != expected:
            raise ZooError(
                f"member {member}: flat vector of {len(vector)} weights, not weightn_conv + weightn_fc = "
                f"{expected}; the zoo's members table is inconsistent"
            )
        vector.tofile(folder / "weights" / f"{k:03d}.bin")
    history = export_history(curves, record)
    _error_rows(history).tofile(folder / "error.bin")
    _stat_row(history, record).tofile(folder / "stat.bin")


def _csv_row(member: int, record: pd.Series) -> dict:
    """``member``'s row of a split's CSV (:data:`CSV_COLUMNS` and ``member``), from its members-table row."""
    row = {name: _encode(name, record[name]) for name in PROPERTY_NAMES}
    row.update(
        weightn_conv=int(record["weightn_conv"]),
        weightn_fc=int(record["weightn_fc"]),
        path=f"nets/{member:06d}",
        member=int(member),
    )
    return row
