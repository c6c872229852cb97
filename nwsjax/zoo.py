"""The zoo: a population's weight snapshots and metadata on disk, and its reader.

Layout of a zoo folder (format ``nwsjax-zoo``, version 1)::

    zoo.json            format, version, status ("running" | "complete"), the full run
                        config, datasets, software versions, timings
    members.parquet     one row per member, indexed by ``member``: the 13 properties,
                        seed, architecture, cohort, weightn_conv / weightn_fc, epochs,
                        steps, exports, snapshot_exports, status, stop_reason,
                        train/val/test accuracy, and where its snapshots are
                        (``part``, ``row``)
    curves.parquet      one row per member and epoch: lrate, train_loss, train_acc,
                        val_acc, test_acc, steps
    snapshots/<cohort>/part-NNNNN/
                        an Orbax checkpoint of ``{"params": ..., "batch_stats": ...}``
                        whose leaves are ``[members_in_part, K, *shape]``: row ``row``
                        of part ``part`` is a member's K snapshots, snapshot 1 its
                        initialization, snapshot K its final weights

Flattening a member in the NWS order needs only its architecture, which the members
table holds (:func:`nwsjax.model.layout`).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nwsjax.errors import ZooError
from nwsjax.model import Architecture, Segment, flatten, layout
from nwsjax.space import PROPERTY_NAMES

__all__ = ["FORMAT", "VERSION", "ZooWriter", "Zoo", "open_zoo", "snapshot_exports"]

FORMAT = "nwsjax-zoo"
VERSION = 1


def snapshot_exports(n_exports: int, k: int) -> np.ndarray:
    """The reference's choice of K exports out of ``n_exports``: ``round(linspace(1, n, K))``.

    Returns 1-based export numbers, int64 [K] (repeats when ``n_exports < K``).
    """
    return np.round(np.linspace(1, n_exports, k)).astype(np.int64)


def _write_json(path: Path, obj: Mapping) -> None:
    """Writes JSON atomically: a reader sees the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default))
    os.replace(tmp, path)


def _write_parquet(path: Path, frame: pd.DataFrame) -> None:
    tmp = path.with_name(path.name + ".tmp")
    frame.to_parquet(tmp)
    os.replace(tmp, path)


def _json_default(obj):
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj)}")


def software_versions() -> dict[str, str]:
    import flax
    import jax
    import optax
    import orbax.checkpoint

    from nwsjax import __version__

    return {
        "nwsjax": __version__,
        "jax": jax.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "orbax-checkpoint": orbax.checkpoint.__version__ if hasattr(orbax.checkpoint, "__version__") else "",
        "numpy": np.__version__,
        "backend": jax.default_backend(),
    }


class ZooWriter:
    """Writes a zoo while its population trains.

    Members arrive one at a time (:meth:`add_member`) as they finish; they are
    buffered per cohort and written as Orbax checkpoints of ``members_per_part``
    members. :meth:`close` writes the tables and marks the zoo complete.
    """

    def __init__(self, path: str | os.PathLike, run_config: Mapping[str, Any], *, members_per_part: int = 16):
        import orbax.checkpoint as ocp

        self.path = Path(path)
        self.members_per_part = members_per_part
        (self.path / "snapshots").mkdir(parents=True, exist_ok=True)
        self.work = self.path / "work"
        self.work.mkdir(exist_ok=True)
        self.info = {
            "format": FORMAT,
            "version": VERSION,
            "status": "running",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "config": dict(run_config),
            "versions": software_versions(),
        }
        _write_json(self.path / "zoo.json", self.info)
        self._checkpointer = ocp.StandardCheckpointer()
        self._buffers: dict[str, list] = {}
        self._parts: dict[str, int] = {}
        self._records: list[dict] = []
        self._curves: list[dict] = []

    @property
    def members_written(self) -> int:
        return len(self._records)

    @property
    def epochs_recorded(self) -> int:
        return len(self._curves)

    def spill_path(self, member: int) -> Path:
        """A scratch file for one member's exports while it trains."""
        path = self.work / f"member-{member:06d}.f32"
        path.unlink(missing_ok=True)
        return path

    def add_member(self, cohort: str, arch: Architecture, record: dict, snapshots, curves: Sequence[dict]) -> None:
        """Adds a finished member.

        Args:
          record: its members-table row (without ``part`` and ``row``).
          snapshots: ``{"params": tree, "batch_stats": tree}`` with leaves ``[K, *shape]``,
            or the pair ``(params, batch_stats)``.
          curves: its per-epoch rows.
        """
        params, batch_stats = snapshots if isinstance(snapshots, tuple) else (snapshots["params"], snapshots["batch_stats"])
        record = dict(record, num_classes=arch.num_classes)
        self._buffers.setdefault(cohort, []).append((record, params, batch_stats))
        self._curves.extend(curves)
        if len(self._buffers[cohort]) >= self.members_per_part:
            self.flush_cohort(cohort)

    def flush_cohort(self, cohort: str) -> None:
        """Writes the buffered members of ``cohort`` as one Orbax checkpoint (async)."""
        import jax

        buffered = self._buffers.pop(cohort, [])
        if not buffered:
            return
        number = self._parts.get(cohort, 0)
        self._parts[cohort] = number + 1
        part = f"snapshots/{cohort}/part-{number:05d}"
        stack = lambda *xs: np.stack(xs)  # noqa: E731
        tree = {
            "params": jax.tree.map(stack, *[b[1] for b in buffered]),
            "batch_stats": jax.tree.map(stack, *[b[2] for b in buffered]),
        }
        self._checkpointer.save((self.path / part).absolute(), tree)
        for row, (record, _, _) in enumerate(buffered):
            self._records.append(dict(record, part=part, row=row))

    def wait(self) -> None:
        """Writes what is buffered, waits for the snapshot writes, writes the tables."""
        for cohort in list(self._buffers):
            self.flush_cohort(cohort)
        self._checkpointer.wait_until_finished()
        members = pd.DataFrame(self._records).set_index("member").sort_index()
        _write_parquet(self.path / "members.parquet", members)
        curves = pd.DataFrame(self._curves)
        if len(curves):
            curves = curves.sort_values(["member", "epoch"]).reset_index(drop=True)
        _write_parquet(self.path / "curves.parquet", curves)

    def close(self, **summary) -> None:
        """Marks the zoo complete (after :meth:`wait`), recording ``summary`` in zoo.json."""
        self._checkpointer.close()
        shutil.rmtree(self.work, ignore_errors=True)
        self.info.update(summary, status="complete")
        _write_json(self.path / "zoo.json", self.info)


class Zoo:
    """A zoo opened for reading (see :func:`open_zoo`).

    Attributes:
      path: the zoo folder.
      info: the contents of zoo.json (format, run config, versions, timings).
      members: pandas DataFrame, one row per member, indexed by member id.
      num_snapshots: K, snapshots per member.
    """

    def __init__(self, path: Path, info: dict, members: pd.DataFrame):
        self.path = path
        self.info = info
        self.members = members
        self.num_snapshots = int(info["config"]["train"]["snapshots"])

    def __repr__(self) -> str:
        return f"Zoo({str(self.path)!r}, members={len(self.members)}, snapshots={self.num_snapshots})"

    @functools.cached_property
    def curves(self) -> pd.DataFrame:
        """Per-epoch curves: one row per member and epoch."""
        return pd.read_parquet(self.path / "curves.parquet")

    @property
    def properties(self) -> tuple[str, ...]:
        return PROPERTY_NAMES

    def architecture(self, member: int) -> Architecture:
        row = self.members.loc[member]
        return Architecture(
            int(row.filter_size),
            int(row.depth_conv),
            int(row.depth_fc),
            int(row.width_conv),
            int(row.width_fc),
            row.batch_norm == "on",
            int(row.num_classes),
        )

    def layout(self, member: int) -> list[Segment]:
        """Where each parameter array of ``member`` sits in its flat NWS vector."""
        return layout(self.architecture(member))

    def _check_snapshot(self, snapshot: int) -> int:
        k = self.num_snapshots
        if not isinstance(snapshot, (int, np.integer)) or not 1 <= snapshot <= k:
            raise ZooError(f"snapshot={snapshot!r}: this zoo has snapshots 1..{k}")
        return int(snapshot)

    def _ids(self, ids) -> list[int]:
        ids = [int(i) for i in np.atleast_1d(np.asarray(ids))]
        unknown = [i for i in ids if i not in self.members.index]
        if unknown:
            raise ZooError(f"unknown member ids {unknown[:5]}; this zoo has ids {self.members.index.min()}..{self.members.index.max()}")
        return ids

    @functools.lru_cache(maxsize=4)  # noqa: B019 - a Zoo is long-lived and few parts are hot
    def _part(self, part: str) -> dict:
        import orbax.checkpoint as ocp

        directory = (self.path / part).absolute()
        if not directory.is_dir():
            raise ZooError(f"{directory}: snapshot checkpoint missing; the zoo is incomplete, retrain or restore it")
        with ocp.StandardCheckpointer() as checkpointer:
            return checkpointer.restore(directory)

    def _gather(self, ids: Sequence[int], snapshot: int, collection: str):
        """Stacked ``collection`` trees of ``ids`` at ``snapshot``: leaves ``[len(ids), *shape]``."""
        import jax

        ids = self._ids(ids)
        archs = {self.architecture(i) for i in ids}
        if len(archs) > 1:
            raise ZooError(
                "members have different architectures; select ids of one architecture "
                "(group by zoo.members.architecture) or use flat() per member"
            )
        rows = self.members.loc[ids]
        pieces = []
        for part, row in zip(rows.part, rows.row):
            tree = self._part(part)[collection]
            pieces.append(jax.tree.map(lambda x: np.asarray(x[int(row), snapshot - 1]), tree))
        return jax.tree.map(lambda *xs: np.stack(xs), *pieces)

    def params(self, ids, snapshot: int | None = None):
        """Stacked parameter trees of members ``ids`` (one architecture) at ``snapshot``.

        Args:
          ids: member ids.
          snapshot: 1..K (default K, the final weights).

        Returns:
          a Flax params tree with leaves ``[len(ids), *shape]``.
        """
        return self._gather(ids, self._default(snapshot), "params")

    def batch_stats(self, ids, snapshot: int | None = None):
        """Batch-norm running statistics, shaped like :meth:`params`."""
        return self._gather(ids, self._default(snapshot), "batch_stats")

    def _default(self, snapshot):
        return self.num_snapshots if snapshot is None else self._check_snapshot(snapshot)

    def flat(self, ids, snapshot: int | None = None) -> np.ndarray | list[np.ndarray]:
        """Flattened weight vectors of ``ids`` in NWS order at ``snapshot`` (default K).

        Returns:
          float32 ``[len(ids), n_weights]`` when the members share a length, else a
          list of ``[n_weights_i]`` vectors.
        """
        snapshot = self._default(snapshot)
        ids = self._ids(ids)
        vectors = []
        for i in ids:
            params = self._gather([i], snapshot, "params")
            vectors.append(flatten(params, self.architecture(i))[0])
        if len({len(v) for v in vectors}) == 1:
            return np.stack(vectors)
        return vectors


def open_zoo(path: str | os.PathLike) -> Zoo:
    """Opens a zoo folder written by the population trainer.

    Raises ZooError (one line, with the fix) when the folder is not a zoo, is still
    being written, is of another format version, or lacks its tables.
    """
    path = Path(path)
    info_path = path / "zoo.json"
    if not path.is_dir():
        raise ZooError(f"{path}: no such folder; pass the --out folder of a population run")
    if not info_path.is_file():
        raise ZooError(f"{path}: not a zoo (no zoo.json); pass the --out folder of a population run")
    try:
        info = json.loads(info_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ZooError(f"{info_path}: unreadable ({err.__class__.__name__}); the zoo is corrupt, retrain it") from None
    if info.get("format") != FORMAT:
        raise ZooError(f"{path}: format {info.get('format')!r} is not {FORMAT!r}; for NWS CSVs use nwsjax.formats")
    if info.get("version") != VERSION:
        raise ZooError(f"{path}: zoo format version {info.get('version')} is not {VERSION}; use the nwsjax version that wrote it")
    if info.get("status") != "complete":
        raise ZooError(f"{path}: the run that writes this zoo has not finished (status {info.get('status')!r}); wait for it or resume it")
    members_path = path / "members.parquet"
    if not members_path.is_file():
        raise ZooError(f"{path}: members.parquet missing; the zoo is incomplete, retrain it")
    try:
        members = pd.read_parquet(members_path)
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise ZooError(f"{members_path}: unreadable ({err.__class__.__name__}); the zoo is corrupt, retrain it") from None
    return Zoo(path, info, members)
