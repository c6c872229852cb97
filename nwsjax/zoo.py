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
table holds (:func:`nwsjax.layout.layout`); its vector holds the moving statistics (the
released layout) when its ``weightn_conv`` counts them, as every zoo written since
they were added does.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import os
import shutil
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from nwsjax.errors import ZooError
from nwsjax.layout import Segment, count_weights, flatten, layout, moving_stats_of
from nwsjax.model import Architecture
from nwsjax.space import PROPERTY_NAMES

__all__ = [
    "FORMAT", "VERSION", "ZooWriter", "PartWriter", "member_record", "Spill", "Zoo", "open_zoo", "read_info", "snapshot_exports",
    "lock_zoo", "never_started", "WeightSource", "check_ids", "check_snapshot", "one_architecture",
    "stack_vectors",
    "DEFAULT_READ_CACHE_BYTES",
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
    """Writes a zoo while its population trains: the zoo's lifecycle around a :class:`PartWriter`.

    A new writer starts a zoo (zoo.json, status "running") or attaches to a running one
    (a resumed run, or a process other than 0 of a multi-host run), under the writer
    lock (:func:`lock_zoo`), and takes over what is on disk: committed parts stay,
    uncommitted leftovers go (:func:`_take_over`). A member trains with its exports in
    a scratch file (:meth:`spill`); once it stops, :meth:`finish_member` turns them into
    its members-table row and K snapshots, which ``parts`` (a :class:`PartWriter`)
    commits part by part. A killed run therefore leaves committed parts plus, at most,
    leftovers that attaching again removes: that is what ``--resume`` does.
    :meth:`close` gathers the tables from the committed parts and marks the zoo
    complete; :meth:`detach` stops writing and leaves the zoo running.

    Args:
      path: the zoo folder.
      run_config: given, a new zoo is started; None, the writer attaches to the running
        zoo at ``path`` and takes over its committed parts.
      members_per_part, process, processes: see :class:`PartWriter`.
      fault: called with the name of each point where a kill or a write error can hit
        (``"export"``, ``"part-rows-written"``, ``"part-save-started"``,
        ``"tables-written"``); the interruption tests pass one that kills the process
        or raises ``OSError(ENOSPC)`` there. None: nothing.

    Attributes:
      committed: ids of the members committed before this writer started;
        committed_epochs: their epochs.
      info: the contents of zoo.json.
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
        self.path = Path(path)
        self.process, self.processes = process, processes
        self.work = self.path / "work" / f"process-{process}"
        self.fault = fault or (lambda point: None)
        if run_config is not None:
            self.path.mkdir(parents=True, exist_ok=True)
        self._lock = lock_zoo(self.path, process)
        self.info = _start(self.path, run_config) if run_config is not None else read_info(self.path, running=True)
        self.committed, self.committed_epochs, next_part = _take_over(self.path, process, self.work)
        self.parts = PartWriter(self.path, members_per_part=members_per_part, process=process, processes=processes,
                                fault=self.fault, next_part=next_part)

    @property
    def members_added(self) -> int:
        """Members added through this writer (not counting those committed before it started)."""
        return self.parts.members_added

    @property
    def epochs_recorded(self) -> int:
        """Epochs of the members added through this writer."""
        return self.parts.epochs_recorded

    def spill(self, member: int) -> Spill:
        """A new, empty scratch file for ``member``'s exports while it trains."""
        return Spill(self.work / f"member-{member:06d}.f32")

    def finish_member(
        self,
        member: int,
        properties: Mapping[str, Any],
        *,
        cohort: str,
        arch: Architecture,
        spill: Spill,
        curves: Sequence[dict],
        epochs: int,
        steps: int,
        status: str,
        reason: str,
        snapshots: int,
    ) -> None:
        """Adds a member that stopped training: its row, its K snapshots out of its exports, its curves.

        Args:
          member, properties, cohort, arch, curves, epochs, steps, status, reason: its
            members-table row, as :func:`member_record` takes them.
          spill: its exports (the initialization, then one per epoch); discarded here.
          snapshots: K, the evenly spaced exports kept (:func:`snapshot_exports`).
        """
        import jax

        picks = snapshot_exports(spill.count, snapshots)
        record = member_record(member, properties, cohort=cohort, arch=arch, exports=spill.count, picks=picks,
                               curves=curves, epochs=epochs, steps=steps, status=status, reason=reason)
        kept = jax.tree.map(lambda rows: rows[picks - 1], spill.read())
        self.parts.add_member(cohort, arch, record, kept, curves)
        spill.discard()

    def add_member(self, cohort: str, arch: Architecture, record: dict, snapshots, curves: Sequence[dict]) -> None:
        """Adds a finished member from its row and snapshots (:meth:`PartWriter.add_member`)."""
        self.parts.add_member(cohort, arch, record, snapshots, curves)

    def flush_cohort(self, cohort: str, like=None) -> None:
        """Writes the buffered members of ``cohort`` as parts (:meth:`PartWriter.flush_cohort`)."""
        self.parts.flush_cohort(cohort, like)

    def wait(self) -> None:
        """Writes what is buffered and waits until every part of this process is committed."""
        self.parts.wait()

    def detach(self) -> None:
        """Stops writing without closing the zoo: the writer lock is released.

        For a process other than 0 once its share is committed, and after an error:
        what is committed stays, the zoo stays "running" (``--resume`` continues it),
        and in-flight writes are cleaned up by the next writer (:func:`_take_over`).
        """
        try:
            self.parts.close()
        except Exception:  # noqa: BLE001 - the error that brought us here is the one to report
            pass
        self._lock.release()

    def close(self, expected: int | None = None, **summary) -> None:
        """Writes the tables from every committed part and marks the zoo complete.

        Call after :meth:`wait` (of every process); in a multi-host run, process 0 only.
        ``expected``: the population size; fewer members on disk is an error.
        ``summary`` is recorded in zoo.json.
        """
        self.parts.close()
        _write_tables(self.path, expected)
        self.fault("tables-written")
        shutil.rmtree(self.work.parent, ignore_errors=True)
        self.info.update(summary, status="complete")
        _write_json(self.path / "zoo.json", self.info)
        self._lock.release()


class PartWriter:
    """Writes finished members into a zoo's ``snapshots`` folder, one committed part at a time.

    Members arrive one at a time (:meth:`add_member`); they are buffered per cohort (the
    folder ``snapshots/<cohort>``) and written as Orbax checkpoints of
    ``members_per_part`` members. A part is *committed* once its Orbax folder is final
    (Orbax writes into a temporary folder and renames it when done); its members-table
    rows and curves are written just before, atomically, as ``part-NNNNN.rows-P.json``
    beside it (P: the writing process).

    Several processes (a multi-host run) write one zoo together through Orbax's
    multi-host checkpointing: a cohort's parts are written when every process has
    finished its share of the cohort (:meth:`flush_cohort`, collective), each part one
    global array whose rows ``[p * m, (p + 1) * m)`` are process ``p``'s members
    (``m = members_per_part``, unused rows zero), each process writing its own rows.

    Args:
      path: the zoo folder.
      members_per_part: members (per process) per Orbax checkpoint.
      process, processes: this process's index and the number of processes.
      fault: called at ``"part-rows-written"`` and ``"part-save-started"`` (see :class:`ZooWriter`).
      next_part: per cohort, the number of its next part (after those already committed).
    """

    def __init__(self, path: Path, *, members_per_part: int, process: int, processes: int,
                 fault: Callable[[str], None], next_part: Mapping[str, int]):
        import orbax.checkpoint as ocp

        self.path = path
        self.members_per_part = members_per_part
        self.process, self.processes = process, processes
        self.fault = fault
        self.members_added = 0
        self.epochs_recorded = 0
        self._next_part = dict(next_part)
        self._buffers: dict[str, list] = {}
        self._checkpointer = ocp.StandardCheckpointer()

    def add_member(self, cohort: str, arch: Architecture, record: dict, snapshots, curves: Sequence[dict]) -> None:
        """Adds a finished member.

        Args:
          record: its members-table row (without ``part`` and ``row``; :func:`member_record`).
          snapshots: ``{"params": tree, "batch_stats": tree}`` with leaves ``[K, *shape]``,
            or the pair ``(params, batch_stats)``.
          curves: its per-epoch rows.
        """
        params, batch_stats = snapshots if isinstance(snapshots, tuple) else (snapshots["params"], snapshots["batch_stats"])
        record = dict(record, num_classes=arch.num_classes)
        self._buffers.setdefault(cohort, []).append((record, {"params": params, "batch_stats": batch_stats}, list(curves)))
        self.members_added += 1
        self.epochs_recorded += len(curves)

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

    def close(self) -> None:
        """Stops Orbax's checkpointer (after its writes in flight)."""
        self._checkpointer.close()


def member_record(member: int, properties: Mapping[str, Any], *, cohort: str, arch: Architecture, exports: int,
                  picks: np.ndarray, curves: Sequence[dict], epochs: int, steps: int, status: str,
                  reason: str) -> dict:
    """A member's members-table row (without ``part`` and ``row``, which its part adds).

    Args:
      member: its id; properties: its hyper-parameters (``MemberConfig.to_dict()``).
      cohort, arch: the cohort it trained in and its architecture.
      exports: how many times it was exported (the initialization, then once per epoch);
        picks: those kept as its snapshots, 1-based (:func:`snapshot_exports`).
      curves: its per-epoch rows (the last gives its final losses and accuracies).
      epochs, steps: what it trained; status, reason: ``"finished"`` or ``"diverged"``, and why it stopped.
    """
    last = curves[-1] if curves else {}
    counts = count_weights(arch)
    return {
        "member": member,
        **properties,
        "architecture": arch.label(),
        "cohort": cohort,
        "weightn_conv": counts["conv"],
        "weightn_fc": counts["fc"],
        "epochs": epochs,
        "steps": steps,
        "exports": exports,
        "snapshot_exports": [int(p) for p in picks],
        "status": status,
        "stop_reason": reason,
        **{key: last.get(key, float("nan")) for key in ("train_loss", "train_acc", "val_acc", "test_acc")},
    }


def _start(path: Path, run_config: Mapping[str, Any]) -> dict:
    """Starts a zoo at ``path``: writes its zoo.json (status "running") and its ``snapshots`` folder."""
    info = {
        "format": FORMAT,
        "version": VERSION,
        "status": "running",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": dict(run_config),
        "versions": software_versions(),
    }
    _write_json(path / "zoo.json", info)
    (path / "snapshots").mkdir(exist_ok=True)
    return info


def _take_over(path: Path, process: int, work: Path) -> tuple[set[int], int, dict[str, int]]:
    """Removes uncommitted leftovers of process ``process`` in the zoo at ``path``.

    A run can be killed at any instruction, so everything it may leave is either
    committed (a part whose Orbax folder is final, with its rows file) and reused,
    or removed here: this process's rows files of parts that never committed, its
    scratch folder ``work`` (exports of members that were training: they train again
    from their start), half-written ``*.tmp`` files, and (process 0) Orbax's temporary
    folders. Every process sees the same committed parts.

    Returns:
      the committed member ids, their epochs, and per cohort the number of its next part.
    """
    committed: set[int] = set()
    epochs, next_part = 0, {}
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for leftover in path.glob(f"snapshots/*/part-*.rows-{process}.json*"):
        if leftover.name.endswith(".tmp") or not _part_dir(leftover).is_dir():
            leftover.unlink()  # its checkpoint never committed: its members train again
    for part_dir, rows in _committed_rows(path):
        committed.update(int(r["member"]) for r in rows["members"])
        epochs += len(rows["curves"])
        number, cohort = int(part_dir.name.split("-")[1]), part_dir.parent.name
        next_part[cohort] = max(next_part.get(cohort, 0), number + 1)
    if process == 0:
        for leftover in path.glob("snapshots/*/part-*.orbax-checkpoint-tmp*"):
            shutil.rmtree(leftover, ignore_errors=True)
        for leftover in path.glob("*.tmp"):
            leftover.unlink(missing_ok=True)
    return committed, epochs, next_part


def _write_tables(path: Path, expected: int | None) -> None:
    """Writes members.parquet and curves.parquet from every committed part of the zoo at ``path``.

    ``expected``: the population size; fewer members on disk is a ZooError.
    """
    records, curves = [], []
    for _, rows in _committed_rows(path):
        records += rows["members"]
        curves += rows["curves"]
    members = pd.DataFrame(records)
    if expected is not None and len(members) != expected:
        raise ZooError(f"{path}: {len(members)} of {expected} members committed; resume the run with --resume")
    if len(members):
        members = members.set_index("member").sort_index()
    _write_parquet(path / "members.parquet", members)
    curves = pd.DataFrame(curves)
    if len(curves):
        curves = curves.sort_values(["member", "epoch"]).reset_index(drop=True)
    _write_parquet(path / "curves.parquet", curves)


class Spill:
    """One training member's exports (``{"params", "batch_stats"}`` trees) in a scratch file.

    Each export is appended as one float32 vector of the tree's leaves. The file is
    created empty (whatever an earlier, killed attempt left there is dropped), and
    :meth:`read` returns exactly the exports appended through this object, so a stale
    or foreign tail can never be mistaken for one.
    """

    def __init__(self, path: Path):
        self.path = path
        self.count = 0
        self._treedef = None
        self._shapes: list[tuple[int, ...]] = []
        path.write_bytes(b"")

    def append(self, tree) -> None:
        """Appends one export (every export of a member has the same tree structure and shapes)."""
        import jax

        leaves, treedef = jax.tree.flatten(tree)
        shapes = [np.shape(x) for x in leaves]
        if self._treedef is None:
            self._treedef, self._shapes = treedef, shapes
        elif (treedef, shapes) != (self._treedef, self._shapes):
            raise ValueError(f"{self.path}: an export of another structure than the member's earlier ones")
        vector = np.concatenate([np.ravel(np.asarray(x, np.float32)) for x in leaves])
        with open(self.path, "r+b") as f:
            f.seek(self.count * vector.nbytes)
            f.write(vector.tobytes())
        self.count += 1

    def read(self):
        """Every export so far: the member's tree with leaves ``[count, *shape]``."""
        import jax

        sizes = [int(np.prod(shape)) for shape in self._shapes]
        rows = np.fromfile(self.path, np.float32, count=self.count * sum(sizes))
        if rows.size != self.count * sum(sizes):
            raise ZooError(f"{self.path}: scratch file cut short (another process removed it?); resume the run")
        rows = rows.reshape(self.count, -1)
        leaves, offset = [], 0
        for shape, size in zip(self._shapes, sizes):
            leaves.append(rows[:, offset : offset + size].reshape(self.count, *shape))
            offset += size
        return jax.tree.unflatten(self._treedef, leaves)

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


#: Budget of a zoo's decoded-chunk cache (:attr:`Zoo.read_cache_bytes`).
DEFAULT_READ_CACHE_BYTES = 512 << 20

#: The collections of a snapshot tree.
COLLECTIONS = ("params", "batch_stats")


@runtime_checkable
class WeightSource(Protocol):
    """What reading flattened weight vectors needs of a zoo (:class:`nwsjax.meta.WeightReader`).

    :class:`Zoo` and :class:`nwsjax.formats.common.FileZoo` implement it.

    Attributes:
      members: one row per member, indexed by member id.
      num_snapshots: K, snapshots per member.
    """

    members: pd.DataFrame
    num_snapshots: int

    def storage_parts(self, ids: Sequence[int]) -> np.ndarray:
        """The storage part of each member (object ``[len(ids)]``): members of one part are
        stored together, share one vector length and are best read together; ``""`` for a
        member stored on its own."""
        ...

    def flat(self, ids, snapshot: int | None = None) -> np.ndarray | list[np.ndarray]:
        """Flattened weight vectors (NWS order) of ``ids`` at ``snapshot`` (1..K, default K):
        float32 ``[len(ids), n_weights]`` when they share a length, else a list."""
        ...


def check_ids(members: pd.DataFrame, ids) -> list[int]:
    """``ids`` as a list of ints; ZooError naming the first unknown ones."""
    ids = [int(i) for i in np.atleast_1d(np.asarray(ids))]
    unknown = [i for i in ids if i not in members.index]
    if unknown:
        known = f"{members.index.min()}..{members.index.max()}" if len(members.index) else "none"
        raise ZooError(f"unknown member ids {unknown[:5]}; this zoo has ids {known}")
    return ids


def check_snapshot(snapshot: int | None, num_snapshots: int) -> int:
    """``snapshot`` (None: K, the final weights); ZooError unless it is in ``1..K``."""
    if snapshot is None:
        return num_snapshots
    if not isinstance(snapshot, (int, np.integer)) or not 1 <= snapshot <= num_snapshots:
        raise ZooError(f"snapshot={snapshot!r}: this zoo has snapshots 1..{num_snapshots}")
    return int(snapshot)


def stack_vectors(vectors: Sequence[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    """Flat vectors as ``[len(vectors), n_weights]`` when they share a length, else as they are (a list)."""
    if len({len(v) for v in vectors}) == 1:
        return np.stack(vectors)
    return list(vectors)


def one_architecture(zoo, ids: Sequence[int]) -> Architecture:
    """The architecture ``ids`` share (``zoo.architecture``); ZooError when they do not."""
    archs = {zoo.architecture(i) for i in ids}
    if len(archs) > 1:
        raise ZooError(
            "members have different architectures; select ids of one architecture "
            "(group by zoo.members.architecture) or use flat() per member"
        )
    return archs.pop()


class _PartReader:
    """Reads the rows of one snapshot out of a zoo's Orbax parts, through Orbax's public API.

    Orbax's checkpoint metadata names each leaf, and ``orbax.checkpoint.type_handlers``
    gives its TensorStore spec; TensorStore then reads ``leaf[rows, snapshot - 1]``
    only. Orbax stores a part's leaf as one compressed chunk ``[rows_in_part, K,
    *shape]``, so the first read decodes it whole; decoded chunks stay in a cache of
    ``cache_bytes`` (least recently used out first) for the part's other snapshots.
    The parts of a cohort hold the same tree, so the metadata of the first part read
    (about 10 ms) names the leaves of all (a part that differs is opened with its own).
    Opened parts (TensorStore handles, a few KB each) are kept, the ``max_open`` most
    recently used. Restoring a whole part with Orbax's ``StandardCheckpointer`` and
    slicing it instead measured 1.5 to 2.5 times slower on parts of 16 small networks
    (and holds all K snapshots of the part in host memory).
    """

    max_open = 256

    def __init__(self, cache_bytes: int):
        import tensorstore as ts
        from orbax.checkpoint import type_handlers

        self.cache_bytes = int(cache_bytes)
        self.context = ts.Context(ts.Context.Spec({"cache_pool": {"total_bytes_limit": self.cache_bytes}}),
                                  parent=type_handlers.get_ts_context(use_ocdbt=True))
        self._open: OrderedDict[tuple[Path, str], dict] = OrderedDict()
        self._trees: dict[Path, Any] = {}  # cohort folder -> Orbax metadata of one of its parts

    def read(self, directory: Path, rows: np.ndarray, snapshot: int, collection: str, num_snapshots: int) -> dict:
        """``collection``'s tree with leaves ``[len(rows), *shape]``: rows ``rows`` at ``snapshot``."""
        import jax

        stores = self._leaves(directory, collection, num_snapshots)
        unique, inverse = np.unique(rows, return_inverse=True)
        reads = jax.tree.map(lambda store: store.oindex[unique, snapshot - 1].read(), stores)
        in_order = len(unique) == len(rows) and bool((unique == rows).all())
        return jax.tree.map(lambda read: read.result() if in_order else read.result()[inverse], reads)

    def _leaves(self, directory: Path, collection: str, num_snapshots: int) -> dict:
        """The TensorStore arrays ``[rows_in_part, K, *shape]`` of one collection of a part, opened once."""
        key = (directory, collection)
        if key not in self._open:
            tree = self._trees.get(directory.parent)
            try:
                stores = self._open_leaves(directory, self._metadata(directory) if tree is None else tree, collection,
                                           num_snapshots)
            except ValueError:  # not as the cohort's other parts: by its own metadata
                tree = self._metadata(directory)
                try:
                    stores = self._open_leaves(directory, tree, collection, num_snapshots)
                except ValueError as err:
                    raise ZooError(f"{directory}: cannot read its {collection} ({str(err).splitlines()[0][:120]}); the "
                                   "zoo is incomplete or of another storage layout, retrain or restore it") from None
            self._open[key] = stores
            if len(self._open) > self.max_open:
                self._open.popitem(last=False)
        self._open.move_to_end(key)
        return self._open[key]

    def _metadata(self, directory: Path):
        """Orbax's metadata of a part (a tree of ``ArrayMetadata``), kept for its cohort."""
        import orbax.checkpoint as ocp

        with ocp.StandardCheckpointer() as checkpointer:
            tree = checkpointer.metadata(directory).item_metadata if directory.is_dir() else None
        if tree is None:  # Orbax answers None for a missing, unfinished or corrupt checkpoint
            raise ZooError(f"{directory}: snapshot checkpoint missing, unfinished or unreadable; "
                           "the zoo is incomplete, retrain or restore it")
        self._trees[directory.parent] = tree
        return tree

    def _open_leaves(self, directory: Path, tree, collection: str, num_snapshots: int) -> dict:
        """Opens the leaves of ``tree[collection]`` in part ``directory``; ValueError when TensorStore cannot."""
        import jax
        import orbax.checkpoint as ocp
        import tensorstore as ts
        from etils import epath

        ocdbt = ocp.type_handlers.is_ocdbt_checkpoint(directory)

        def open_leaf(leaf):
            if tuple(leaf.shape[1:2]) != (num_snapshots,):
                raise ZooError(f"{directory}: leaf {leaf.name} has shape {tuple(leaf.shape)}, expected [rows, "
                               f"{num_snapshots}, ...]; the members table does not match the snapshots, retrain the zoo")
            info = ocp.type_handlers.ParamInfo(name=leaf.name, parent_dir=epath.Path(directory), is_ocdbt_checkpoint=ocdbt,
                                               use_zarr3=tree.use_zarr3, ts_context=self.context)
            return ts.open(ocp.type_handlers.get_json_tspec_read(info, use_ocdbt=ocdbt), context=self.context, read=True)

        return jax.tree.map(lambda future: future.result(), jax.tree.map(open_leaf, tree.get(collection, {})))


def training_record(info: Mapping[str, Any]) -> dict:
    """The training config a zoo.json records (``TrainConfig`` as a dict).

    A population.py run saves its whole :class:`~nwsjax.run.RunConfig` (``config.run``,
    the training config nested as ``train``); a zoo written through the library holds
    the config given to :class:`ZooWriter` (``config.train``).
    """
    config = info.get("config", {})
    run = config.get("run")
    if isinstance(run, Mapping) and isinstance(run.get("train"), Mapping):
        return dict(run["train"])
    return dict(config["train"])


class Zoo:
    """A zoo opened for reading (see :func:`open_zoo`); implements :class:`WeightSource`.

    Every read of snapshots goes through :meth:`read_rows` (partial reads of the Orbax
    parts, :class:`_PartReader`).

    Attributes:
      path: the zoo folder.
      info: the contents of zoo.json (format, run config, versions, timings).
      members: pandas DataFrame, one row per member, indexed by member id.
      num_snapshots: K, snapshots per member.
      read_cache_bytes: budget of the cache of decoded snapshot chunks (Orbax stores a
        part's leaf as one chunk ``[members_in_part, K, *shape]``); a new value takes
        effect at the next read (a new cache, parts opened again).
    """

    def __init__(self, path: Path, info: dict, members: pd.DataFrame, *,
                 read_cache_bytes: int = DEFAULT_READ_CACHE_BYTES):
        self.path = path
        self.info = info
        self.members = members
        self.num_snapshots = int(training_record(info)["snapshots"])
        self.read_cache_bytes = int(read_cache_bytes)
        self._reader: _PartReader | None = None
        self._architectures: dict[int, Architecture] = {}
        self._moving_stats: dict[int, bool] = {}

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
        member = int(member)
        if member not in self._architectures:
            row = self.members.loc[member]
            self._architectures[member] = Architecture(
                int(row.filter_size), int(row.depth_conv), int(row.depth_fc), int(row.width_conv),
                int(row.width_fc), row.batch_norm == "on", int(row.num_classes),
            )
        return self._architectures[member]

    def moving_stats(self, member: int) -> bool:
        """Whether ``member``'s flat vector holds the batch-norm moving statistics: its
        ``weightn_conv + weightn_fc`` says (zoos written before they were added have none)."""
        member = int(member)
        if member not in self._moving_stats:
            n_weights = int(self.members.at[member, "weightn_conv"]) + int(self.members.at[member, "weightn_fc"])
            try:
                self._moving_stats[member] = moving_stats_of(self.architecture(member), n_weights)
            except ValueError as err:
                raise ZooError(f"member {member}: {err}; the members table is corrupt, retrain it") from None
        return self._moving_stats[member]

    def layout(self, member: int) -> list[Segment]:
        """Where each array of ``member`` sits in its flat NWS vector."""
        return layout(self.architecture(member), self.moving_stats(member))

    def storage_parts(self, ids: Sequence[int]) -> np.ndarray:
        """The Orbax part (``snapshots/<cohort>/part-NNNNN``) of each member, object ``[len(ids)]``."""
        return self.members["part"].reindex(np.asarray(ids, np.int64)).to_numpy(object)

    def read_rows(self, part: str, rows: Sequence[int], snapshot: int,
                  collections: Sequence[str] = COLLECTIONS) -> dict:
        """Rows ``rows`` of Orbax part ``part`` at ``snapshot``, stacked: the members-table's
        ``part`` and ``row`` say where a member is.

        Args:
          part: the part folder, relative to the zoo (``snapshots/<cohort>/part-NNNNN``).
          rows: rows of the part (repeats allowed), in the order wanted.
          snapshot: 1..K.
          collections: which trees to read (default both).

        Returns:
          ``{"params": tree, "batch_stats": tree}`` (those asked for), leaves
          ``[len(rows), *shape]`` (numpy, as stored).
        """
        snapshot = check_snapshot(snapshot, self.num_snapshots)
        if self._reader is None or self._reader.cache_bytes != int(self.read_cache_bytes):
            self._reader = _PartReader(int(self.read_cache_bytes))  # a new budget: a new cache, parts opened again
        rows = np.asarray(rows, np.int64)
        directory = (self.path / part).absolute()
        return {c: self._reader.read(directory, rows, snapshot, c, self.num_snapshots) for c in collections}

    def _groups(self, ids: list[int]) -> dict[tuple[str, Architecture, bool], tuple[list[int], np.ndarray]]:
        """By (part, architecture, moving statistics): the positions in ``ids`` and the rows
        in the part of its members, what one :meth:`read_rows` reads."""
        rows = self.members["row"].reindex(ids).to_numpy(np.int64)
        groups: dict[tuple[str, Architecture, bool], list[int]] = {}
        for i, (member, part) in enumerate(zip(ids, self.storage_parts(ids))):
            groups.setdefault((part, self.architecture(member), self.moving_stats(member)), []).append(i)
        return {key: (positions, rows[positions]) for key, positions in groups.items()}

    def _gather(self, ids: list[int], snapshot: int, collection: str):
        """Stacked ``collection`` trees of ``ids`` (one architecture) at ``snapshot``: leaves ``[len(ids), *shape]``."""
        import jax

        one_architecture(self, ids)
        pieces, order = [], []
        for (part, *_), (positions, rows) in self._groups(ids).items():
            pieces.append(self.read_rows(part, rows, snapshot, (collection,))[collection])
            order += positions
        tree = pieces[0] if len(pieces) == 1 else jax.tree.map(lambda *xs: np.concatenate(xs), *pieces)
        if order != sorted(order):
            tree = jax.tree.map(lambda x: x[np.argsort(order)], tree)
        return tree

    def params(self, ids, snapshot: int | None = None):
        """Stacked parameter trees of members ``ids`` (one architecture) at ``snapshot``.

        Args:
          ids: member ids.
          snapshot: 1..K (default K, the final weights).

        Returns:
          a Flax params tree with leaves ``[len(ids), *shape]``.
        """
        return self._gather(check_ids(self.members, ids), check_snapshot(snapshot, self.num_snapshots), "params")

    def batch_stats(self, ids, snapshot: int | None = None):
        """Batch-norm running statistics, shaped like :meth:`params`."""
        return self._gather(check_ids(self.members, ids), check_snapshot(snapshot, self.num_snapshots), "batch_stats")

    def flat(self, ids, snapshot: int | None = None) -> np.ndarray | list[np.ndarray]:
        """Flattened weight vectors of ``ids`` in NWS order at ``snapshot`` (default K), with
        the moving statistics where the members table counts them (:meth:`layout`).

        Returns:
          float32 ``[len(ids), n_weights]`` when the members share a length, else a
          list of ``[n_weights_i]`` vectors.
        """
        snapshot = check_snapshot(snapshot, self.num_snapshots)
        ids = check_ids(self.members, ids)
        groups = self._groups(ids)
        vectors: list = [None] * len(ids)
        for (part, arch, moving_stats), (positions, rows) in groups.items():
            trees = self.read_rows(part, rows, snapshot, COLLECTIONS if moving_stats else ("params",))
            flat = flatten(trees["params"], arch, trees.get("batch_stats"))
            if len(groups) == 1:
                return flat
            for i, vector in zip(positions, flat):
                vectors[i] = vector
        return stack_vectors(vectors)


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
