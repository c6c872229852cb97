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
    snapshots/<cohort>/part-NNNNN.rows-P.json
                        the members-table rows and curves of the part's members
                        written by process P (one file per process)
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
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nwsjax.errors import ZooError
from nwsjax.model import Architecture, Segment, flatten, layout
from nwsjax.space import PROPERTY_NAMES

__all__ = [
    "FORMAT", "VERSION", "ZooWriter", "Spill", "Zoo", "open_zoo", "read_info", "snapshot_exports",
    "lock_zoo", "never_started",
]

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
    """Writes a zoo while its population trains, one committed part at a time.

    Members arrive one at a time (:meth:`add_member`) as they finish; they are
    buffered per cohort and written as Orbax checkpoints of ``members_per_part``
    members. A part is *committed* once its Orbax folder is final (Orbax writes into a
    temporary folder and renames it when done); its members-table rows and curves are
    written just before, atomically, as ``part-NNNNN.rows-P.json`` beside it (P: the
    writing process). What a killed run leaves behind is therefore a set of committed
    parts plus, at most, uncommitted leftovers, which attaching to the zoo again
    removes: that is what ``--resume`` does. :meth:`close` gathers the tables from the
    committed parts and marks the zoo complete.

    Several processes (a multi-host run) write one zoo together through Orbax's
    multi-host checkpointing: a cohort's parts are written when every process has
    finished its share of the cohort (:meth:`flush_cohort`, collective), each part one
    global array whose rows ``[p * m, (p + 1) * m)`` are process ``p``'s members
    (``m = members_per_part``, unused rows zero), each process writing its own rows.

    Args:
      path: the zoo folder.
      run_config: given, a new zoo is started (zoo.json written, status "running");
        None, the writer attaches to the running zoo at ``path`` (a resumed run, or a
        process other than 0 of a multi-host run) and takes over its committed parts.
      members_per_part: members (per process) per Orbax checkpoint.
      process, processes: this process's index and the number of processes.
      fault: called with the name of each point where a kill or a write error can hit
        (``"export"``, ``"part-rows-written"``, ``"part-save-started"``,
        ``"tables-written"``); the interruption tests pass one that kills the process
        or raises ``OSError(ENOSPC)`` there. None: nothing.

    Only one live process per index writes a zoo (:func:`lock_zoo`).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        run_config: Mapping[str, Any] | None = None,
        *,
        members_per_part: int = 16,
        process: int = 0,
        processes: int = 1,
        fault: Callable[[str], None] | None = None,
    ):
        import orbax.checkpoint as ocp

        self.path = Path(path)
        self.members_per_part = members_per_part
        self.process, self.processes = process, processes
        self.work = self.path / "work" / f"process-{process}"
        self.fault = fault or (lambda point: None)
        if run_config is not None:
            self.path.mkdir(parents=True, exist_ok=True)
        self._lock = lock_zoo(self.path, process)
        if run_config is not None:
            self.info = {
                "format": FORMAT,
                "version": VERSION,
                "status": "running",
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "config": dict(run_config),
                "versions": software_versions(),
            }
            _write_json(self.path / "zoo.json", self.info)
            (self.path / "snapshots").mkdir(exist_ok=True)
        else:
            self.info = read_info(self.path, running=True)
        self._checkpointer = ocp.StandardCheckpointer()
        self._buffers: dict[str, list] = {}
        self._next_part: dict[str, int] = {}
        self.committed_epochs = 0
        self.committed = self._take_over()
        self._written = 0
        self._epochs = 0

    # -- what is on disk ---------------------------------------------------------------
    def _take_over(self) -> set[int]:
        """Removes uncommitted leftovers; returns the committed member ids.

        A run can be killed at any instruction, so everything it may leave is either
        committed (a part whose Orbax folder is final, with its rows file) and reused,
        or removed here: this process's rows files of parts that never committed, its
        scratch folder (exports of members that were training: they train again from
        their start), half-written ``*.tmp`` files, and (process 0) Orbax's temporary
        folders. Every process sees the same committed parts.
        """
        committed: set[int] = set()
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        for leftover in self.path.glob(f"snapshots/*/part-*.rows-{self.process}.json*"):
            if leftover.name.endswith(".tmp") or not _part_dir(leftover).is_dir():
                leftover.unlink()  # its checkpoint never committed: its members train again
        for part_dir, rows in _committed_rows(self.path):
            committed.update(int(r["member"]) for r in rows["members"])
            self.committed_epochs += len(rows["curves"])
            number, cohort = int(part_dir.name.split("-")[1]), part_dir.parent.name
            self._next_part[cohort] = max(self._next_part.get(cohort, 0), number + 1)
        if self.process == 0:
            for leftover in self.path.glob("snapshots/*/part-*.orbax-checkpoint-tmp*"):
                shutil.rmtree(leftover, ignore_errors=True)
            for leftover in self.path.glob("*.tmp"):
                leftover.unlink(missing_ok=True)
        return committed

    @property
    def members_added(self) -> int:
        """Members added through this writer (not counting those committed before it started)."""
        return self._written

    @property
    def epochs_recorded(self) -> int:
        """Epochs of the members added through this writer."""
        return self._epochs

    def spill(self, member: int) -> Spill:
        """A new, empty scratch file for ``member``'s exports while it trains."""
        return Spill(self.work / f"member-{member:06d}.f32")

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
        self._buffers.setdefault(cohort, []).append((record, {"params": params, "batch_stats": batch_stats}, list(curves)))
        self._written += 1
        self._epochs += len(curves)

        if self.processes == 1 and len(self._buffers[cohort]) >= self.members_per_part:
            self.flush_cohort(cohort)

    def flush_cohort(self, cohort: str, like=None) -> None:
        """Writes the buffered members of ``cohort`` as parts: their rows, then the Orbax checkpoints (async).

        With several processes this is collective: every process calls it once per
        cohort, in the same order, after training its share; ``like`` (a tree of
        ``jax.ShapeDtypeStruct`` with leaves ``[K, *shape]``) gives the shapes to a
        process that had no member of the cohort.
        """
        buffered = self._buffers.pop(cohort, [])
        if self.processes == 1:
            if buffered:
                self._write_part(cohort, buffered, None)
            return
        from jax.experimental import multihost_utils

        counts = multihost_utils.process_allgather(np.int64(len(buffered)))
        m = self.members_per_part
        for j in range(-(-int(np.max(counts)) // m)):
            self._write_part(cohort, buffered[j * m : (j + 1) * m], like)

    def _write_part(self, cohort: str, buffered: list, like) -> None:
        import jax

        counter = self._next_part.get(cohort, 0)
        self._next_part[cohort] = counter + 1
        part = f"snapshots/{cohort}/part-{counter:05d}"
        (self.path / part).parent.mkdir(parents=True, exist_ok=True)
        first = self.process * self.members_per_part if self.processes > 1 else 0
        rows = {
            "members": [dict(record, part=part, row=first + row) for row, (record, *_) in enumerate(buffered)],
            "curves": [c for *_, curves in buffered for c in curves],
        }
        if buffered:
            tree = jax.tree.map(lambda *xs: np.stack(xs), *[b[1] for b in buffered])
        else:
            tree = jax.tree.map(lambda x: np.zeros((0, *x.shape), x.dtype), like)
        if self.processes > 1:
            tree = jax.tree.map(self._global_rows, tree)
        _write_json(self.path / f"{part}.rows-{self.process}.json", rows)
        self.fault("part-rows-written")
        self._checkpointer.save((self.path / part).absolute(), tree)
        self.fault("part-save-started")

    def _global_rows(self, local: np.ndarray):
        """``local`` ``[n <= m, ...]`` as this process's block of a global ``[P * m, ...]`` array."""
        import jax
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        m = self.members_per_part
        block = np.zeros((m, *local.shape[1:]), local.dtype)
        block[: len(local)] = local
        devices = [jax.local_devices(process_index=p)[0] for p in range(self.processes)]
        sharding = NamedSharding(Mesh(np.array(devices), ("process",)), PartitionSpec("process"))
        shard = jax.device_put(block, devices[self.process])
        return jax.make_array_from_single_device_arrays((self.processes * m, *local.shape[1:]), sharding, [shard])

    def wait(self) -> None:
        """Writes what is buffered and waits until every part of this process is committed.

        (With several processes, cohorts are flushed collectively as they end, so nothing
        is left buffered here.)
        """
        if self.processes == 1:
            for cohort in list(self._buffers):
                self.flush_cohort(cohort)
        if self._buffers:
            raise RuntimeError(f"cohorts never flushed: {sorted(self._buffers)}")
        self._checkpointer.wait_until_finished()

    def detach(self) -> None:
        """Stops writing without closing the zoo: the writer lock is released.

        For a process other than 0 once its share is committed, and after an error:
        what is committed stays, the zoo stays "running" (``--resume`` continues it),
        and in-flight writes are cleaned up by the next writer (:meth:`_take_over`).
        """
        try:
            self._checkpointer.close()
        except Exception:  # noqa: BLE001 - the error that brought us here is the one to report
            pass
        self._lock.release()

    def close(self, expected: int | None = None, **summary) -> None:
        """Writes the tables from every committed part and marks the zoo complete.

        Call after :meth:`wait` (of every process); in a multi-host run, process 0 only.
        ``expected``: the population size; fewer members on disk is an error.
        ``summary`` is recorded in zoo.json.
        """
        self._checkpointer.close()
        records, curves = [], []
        for _, rows in _committed_rows(self.path):
            records += rows["members"]
            curves += rows["curves"]
        members = pd.DataFrame(records)
        if expected is not None and len(members) != expected:
            raise ZooError(f"{self.path}: {len(members)} of {expected} members committed; resume the run with --resume")
        if len(members):
            members = members.set_index("member").sort_index()
        _write_parquet(self.path / "members.parquet", members)
        curves = pd.DataFrame(curves)
        if len(curves):
            curves = curves.sort_values(["member", "epoch"]).reset_index(drop=True)
        _write_parquet(self.path / "curves.parquet", curves)
        self.fault("tables-written")
        shutil.rmtree(self.work.parent, ignore_errors=True)
        self.info.update(summary, status="complete")
        _write_json(self.path / "zoo.json", self.info)
        self._lock.release()


class Spill:
    """One training member's exports, appended as float32 vectors to a scratch file.

    The file is created empty (whatever an earlier, killed attempt left there is
    dropped), and :meth:`read` returns exactly the vectors appended through this
    object, so a stale or foreign tail can never be mistaken for an export.
    """

    def __init__(self, path: Path):
        self.path = path
        self.count = 0
        self.size: int | None = None
        path.write_bytes(b"")

    def append(self, vector: np.ndarray) -> None:
        """Appends one export, float32 ``[D]`` (every export of a member has the same D)."""
        vector = np.ascontiguousarray(vector, np.float32)
        if self.size is None:
            self.size = vector.size
        if vector.size != self.size:
            raise ValueError(f"{self.path}: export of {vector.size} values, earlier ones had {self.size}")
        with open(self.path, "r+b") as f:
            f.seek(self.count * self.size * 4)
            f.write(vector.tobytes())
        self.count += 1

    def read(self) -> np.ndarray:
        """Every export so far: float32 ``[count, D]``."""
        rows = np.fromfile(self.path, np.float32, count=self.count * (self.size or 0))
        if rows.size != self.count * (self.size or 0):
            raise ZooError(f"{self.path}: scratch file cut short (another process removed it?); resume the run")
        return rows.reshape(self.count, -1)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


class _ZooLock:
    """An exclusive ``flock`` on ``<zoo>/.writer-P.lock``: one writing process per index.

    The kernel drops the lock when its process dies, ``kill -9`` included, so a killed
    run never leaves a stale lock behind; a second live writer (a run still going when
    its resume starts) is refused instead of interleaving its files with the first's.
    """

    def __init__(self, path: Path, process: int):
        import fcntl

        self.path = path / f".writer-{process}.lock"
        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.close()
            raise ZooError(
                f"{path}: another process is writing this zoo (it holds {self.path.name}); "
                "wait for it to finish or stop it, then resume with --resume"
            ) from None

    def release(self) -> None:
        if not self._file.closed:
            self.path.unlink(missing_ok=True)
            self._file.close()


def lock_zoo(path: str | os.PathLike, process: int = 0) -> _ZooLock:
    """Takes the writer lock of process ``process`` on the zoo folder ``path`` (see :class:`_ZooLock`)."""
    return _ZooLock(Path(path), process)


def never_started(path: str | os.PathLike) -> bool:
    """True when ``path`` is a folder a run was killed in before it wrote zoo.json.

    Such a folder is empty or holds only what creating a zoo writes first (writer
    locks, a half-written ``zoo.json.tmp``, empty ``snapshots``/``work`` folders):
    no member was trained, so the run can start over in it.
    """
    path = Path(path)
    if not path.is_dir() or (path / "zoo.json").exists():
        return False
    for item in path.iterdir():
        if item.is_dir():
            if item.name not in ("snapshots", "work") or any(item.rglob("*.json")):
                return False
        elif not (item.name == "zoo.json.tmp" or (item.name.startswith(".writer-") and item.name.endswith(".lock"))):
            return False
    return True


def committed_members(path: str | os.PathLike) -> set[int]:
    """Ids of the members in the committed parts of the zoo (running or complete) at ``path``."""
    return {int(r["member"]) for _, rows in _committed_rows(Path(path)) for r in rows["members"]}


def _committed_rows(path: Path):
    """``(part folder, rows)`` of every rows file whose checkpoint is committed, in name order."""
    for sidecar in sorted(path.glob("snapshots/*/part-*.rows-*.json")):
        part_dir = _part_dir(sidecar)
        if part_dir.is_dir():
            yield part_dir, _read_sidecar(sidecar)


def _part_dir(sidecar: Path) -> Path:
    """The checkpoint folder a rows file belongs to: ``part-00003.rows-1.json`` -> ``part-00003``."""
    return sidecar.with_name(sidecar.name.split(".")[0])


def _read_sidecar(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ZooError(f"{path}: unreadable ({err.__class__.__name__}); the zoo is corrupt, retrain it") from None


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
        return _read_table(self.path / "curves.parquet")

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
        import jax

        # Restored onto this process's first device whatever the devices that wrote it
        # (a multi-host part is a global array over one device per writing process).
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        with ocp.StandardCheckpointer() as checkpointer:
            stored = checkpointer.metadata(directory).item_metadata
            target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), stored)
            return checkpointer.restore(directory, target)

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


def read_info(path: str | os.PathLike, *, running: bool = False) -> dict:
    """zoo.json of the zoo at ``path``, checked: format, version and status.

    ``running``: the zoo must still be being written (to resume it) instead of complete.
    Raises ZooError (one line, with the fix) otherwise.
    """
    path = Path(path)
    info_path = path / "zoo.json"
    if not path.is_dir():
        raise ZooError(f"{path}: no such folder; pass the --out folder of a population run")
    if not info_path.is_file():
        raise ZooError(f"{path}: not a zoo (no zoo.json); pass the --out folder of a population run")
    try:
        info = json.loads(info_path.read_text())
        if not isinstance(info, dict):
            raise ValueError
    except (OSError, ValueError) as err:
        raise ZooError(f"{info_path}: unreadable ({err.__class__.__name__}); the zoo is corrupt, retrain it") from None
    if info.get("format") != FORMAT:
        raise ZooError(f"{path}: format {info.get('format')!r} is not {FORMAT!r}; for NWS CSVs use nwsjax.formats")
    if info.get("version") != VERSION:
        raise ZooError(f"{path}: zoo format version {info.get('version')} is not {VERSION}; use the nwsjax version that wrote it")
    status = info.get("status")
    if running and status != "running":
        raise ZooError(f"{path}: the zoo is {status!r}, not an interrupted run; there is nothing to resume")
    if not running and status != "complete":
        raise ZooError(
            f"{path}: the run that writes this zoo has not finished (status {status!r}); "
            "wait for it, or if it was killed, continue it with population.py --resume --out " + str(path)
        )
    return info


def open_zoo(path: str | os.PathLike) -> Zoo:
    """Opens a zoo folder written by the population trainer.

    Raises ZooError (one line, with the fix) when the folder is not a zoo, is still
    being written, is of another format version, or lacks its tables.
    """
    path = Path(path)
    info = read_info(path)
    members = _read_table(path / "members.parquet")
    if "part" in members:
        missing = [part for part in members.part.unique() if not (path / part).is_dir()]
        if missing:
            raise ZooError(f"{path / missing[0]}: snapshot checkpoint missing; the zoo is incomplete, retrain or restore it")
    return Zoo(path, info, members)


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise ZooError(f"{path.parent}: {path.name} missing; the zoo is incomplete, retrain it")
    try:
        return pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise ZooError(f"{path}: unreadable ({err.__class__.__name__}); the zoo is corrupt, retrain it") from None
