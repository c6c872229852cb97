"""Shared pieces of the public zoo formats.

* :class:`FileZoo`: the read side of the :class:`nwsjax.zoo.Zoo` API (``members``,
  ``num_snapshots``, ``flat``, ``params``, ``architecture``, ``layout``, ``curves``;
  a :class:`nwsjax.zoo.WeightSource`) over per-member vectors that a format module
  reads from its own files.
* :func:`infer_architecture`: which member of our architecture family, if any, has
  given conv and FC lengths, with or without the batch-norm moving statistics in the
  vector (the output width is solved from the FC length: 20 in the released dataset).
* :func:`export_history`: one row per export of one of our members (export 1 the
  initialization, export ``e + 1`` the weights after epoch ``e``), as both exporters
  write it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nwsjax.errors import ZooError
from nwsjax.layout import Segment, count_weights, layout, moving_stats_of, unflatten
from nwsjax.model import Architecture
from nwsjax.space import ARCHITECTURE_PROPERTIES, PROPERTY_NAMES
from nwsjax.zoo import check_ids, check_snapshot, one_architecture, snapshot_exports, stack_vectors

__all__ = [
    "FileZoo",
    "infer_architecture",
    "switch_value",
    "member_ids",
    "export_history",
    "snapshot_exports_of",
    "check_columns",
]

_SWITCH_WORDS = {"on": "on", "off": "off", "true": "on", "false": "off", "1": "on", "0": "off"}


def switch_value(value: Any) -> Any:
    """An on/off property (batch_norm, augmentation) as ``"on"``/``"off"``.

    Accepts bools, 0/1 and the words on/off/true/false (any case); anything else
    is returned as found.
    """
    if isinstance(value, (bool, np.bool_)):
        return "on" if value else "off"
    if isinstance(value, (int, np.integer, float, np.floating)) and value in (0, 1):
        return "on" if value == 1 else "off"
    if isinstance(value, str):
        return _SWITCH_WORDS.get(value.strip().lower(), value)
    return value


@functools.lru_cache(maxsize=256)
def _fit(shape: tuple, n_conv: int, n_fc: int) -> Architecture | None:
    """The architecture of ``shape`` whose vector (moving statistics in it or not) has these lengths."""
    try:
        one = Architecture(*shape, num_classes=1)
        two = dataclasses.replace(one, num_classes=2)
        count_weights(one)
    except (KeyError, TypeError, ValueError):  # a depth outside the family
        return None
    for moving_stats in (True, False):
        counts_one, counts_two = count_weights(one, moving_stats), count_weights(two, moving_stats)
        if counts_one["conv"] != n_conv:
            continue
        per_class = counts_two["fc"] - counts_one["fc"]
        classes, rest = divmod(n_fc - (counts_one["fc"] - per_class), per_class)
        if rest or classes < 1:
            return None
        return dataclasses.replace(one, num_classes=int(classes))
    return None


def infer_architecture(props: Mapping[str, Any], n_conv: int, n_fc: int) -> Architecture | None:
    """The architecture of our family with ``n_conv`` conv and ``n_fc`` FC weights, or None.

    The lengths may count the batch-norm moving statistics (the released layout) or
    not (:func:`nwsjax.layout.moving_stats_of` tells which, from their sum); with batch
    norm the conv length alone decides, as the two variants differ there.

    Args:
      props: ``filter_size, depth_conv, depth_fc, width_conv, width_fc`` (integers) and
        ``batch_norm`` (on/off, bool or 0/1).
      n_conv, n_fc: lengths of the conv and FC parts of the flat vector.

    Returns:
      the architecture, its ``num_classes`` solved from ``n_fc``; None when a value is
      missing or not an integer, or when the lengths fit no number of classes.
    """
    try:
        shape = tuple(_integer(props[name]) for name in ARCHITECTURE_PROPERTIES)
    except (KeyError, TypeError, ValueError):
        return None
    batch_norm = switch_value(props.get("batch_norm"))
    if batch_norm not in ("on", "off") or any(v is None for v in shape):
        return None
    return _fit((*shape, batch_norm == "on"), int(n_conv), int(n_fc))


def _integer(value: Any) -> int | None:
    if isinstance(value, (bool, np.bool_)) or value is None:
        return None
    number = float(value)
    return int(number) if number.is_integer() else None


def member_ids(frame: pd.DataFrame, where: str) -> np.ndarray:
    """Member ids of a format's rows: its integer ``member`` column (written by our
    exporters) when it has one, else ``0..len(frame)-1`` in file order."""
    if "member" not in frame.columns:
        return np.arange(len(frame), dtype=np.int64)
    ids = pd.to_numeric(frame["member"], errors="coerce")
    if ids.isna().any() or not np.all(ids == np.round(ids)):
        raise ZooError(f"{where}: column 'member' holds non-integer ids; remove the column or fix its values")
    ids = ids.to_numpy(np.int64)
    if len(np.unique(ids)) != len(ids):
        raise ZooError(
            f"{where}: column 'member' repeats ids; give every network its own id or remove the column"
        )
    return ids


def snapshot_exports_of(record: pd.Series, n_exports: int, k: int) -> np.ndarray:
    """Export numbers (1-based) of a member's K snapshots: its ``snapshot_exports`` when
    the members table has them, else the reference's ``round(linspace(1, n_exports, K))``."""
    picks = record.get("snapshot_exports")
    if picks is not None and not (np.isscalar(picks) and pd.isna(picks)) and len(picks) == k:
        return np.asarray(picks, dtype=np.int64)
    return snapshot_exports(n_exports, k)


def export_history(curves: pd.DataFrame | None, record: pd.Series) -> pd.DataFrame:
    """One member's training history, one row per export.

    Export 1 is the initialization (epoch 0), export ``e + 1`` the weights after epoch
    ``e``. Epochs without a curve row (the initialization of our zoos, which is not
    evaluated, or a diverged member's last export) get NaN metrics.

    Args:
      curves: the member's rows of ``zoo.curves`` (``epoch``, ``steps`` and any of
        ``train_acc``, ``val_acc``, ``test_acc``, ``smoothed_val_acc``, ``train_loss``,
        ``test_loss``), or None.
      record: the member's row of ``zoo.members``; its ``exports`` and ``steps`` are
        used when present.

    Returns:
      DataFrame [n_exports rows] with columns export, epoch, steps, train_acc, val_acc,
      test_acc, smoothed_val_acc, train_loss, test_loss (accuracies as fractions).
    """
    metrics = ["train_acc", "val_acc", "test_acc", "smoothed_val_acc", "train_loss", "test_loss"]
    curves = pd.DataFrame(columns=["epoch", "steps"]) if curves is None else curves
    last_epoch = int(curves["epoch"].max()) if len(curves) else 0
    n_exports = int(record["exports"]) if pd.notna(record.get("exports")) else last_epoch + 1
    history = pd.DataFrame({"export": np.arange(1, n_exports + 1), "epoch": np.arange(n_exports)})
    keep = [c for c in ["epoch", "steps", *metrics] if c in curves.columns]
    history = history.merge(curves[keep].drop_duplicates("epoch", keep="last"), on="epoch", how="left")
    for column in metrics:
        if column not in history:
            history[column] = np.nan
    steps = history["steps"].astype("float64")
    if pd.isna(steps.iloc[0]):
        steps.iloc[0] = 0.0
    steps = steps.ffill()
    if pd.notna(record.get("steps")):
        steps[history["epoch"] > last_epoch] = float(record["steps"])
    history["steps"] = steps
    return history[["export", "epoch", "steps", *metrics]]


class FileZoo:
    """The read side of the Zoo API over a public format's files.

    Subclasses fill ``members`` (indexed by member id) and implement :meth:`_vector`
    and :meth:`_read_curves`; :meth:`architecture`, :meth:`layout` and :meth:`params`
    work for members whose ``weightn_conv`` / ``weightn_fc`` fit our architecture
    family (with or without the moving statistics), :meth:`batch_stats` for those whose
    vectors hold the moving statistics.

    Attributes:
      path: where the zoo was read from.
      info: format name, sources and what was left out.
      members: DataFrame, one row per member, indexed by member id.
      num_snapshots: K, snapshots per member.
    """

    def __init__(self, path: Path, info: dict, members: pd.DataFrame, num_snapshots: int):
        self.path = path
        self.info = info
        self.members = members
        self.num_snapshots = int(num_snapshots)

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}({str(self.path)!r}, members={len(self.members)}, snapshots={self.num_snapshots})"

    # -- what subclasses provide -------------------------------------------------------
    def _vector(self, member: int, snapshot: int) -> np.ndarray:
        """Member ``member``'s flat vector at ``snapshot`` (1..K): float32 [n_weights]."""
        raise NotImplementedError

    def _read_curves(self) -> pd.DataFrame:
        raise NotImplementedError

    def _props(self, member: int) -> Mapping[str, Any]:
        """The architecture properties of ``member`` under our names."""
        return self.members.loc[member]

    # -- the Zoo API ---------------------------------------------------------------------
    @functools.cached_property
    def curves(self) -> pd.DataFrame:
        """Training curves, one row per member and export or checkpoint (see the format)."""
        return self._read_curves()

    @property
    def properties(self) -> tuple[str, ...]:
        return PROPERTY_NAMES

    def architecture(self, member: int) -> Architecture:
        """``member``'s architecture in our family; ZooError when its lengths fit none."""
        member = check_ids(self.members, [member])[0]
        row = self.members.loc[member]
        arch = infer_architecture(self._props(member), row["weightn_conv"], row["weightn_fc"])
        if arch is None:
            raise ZooError(
                f"network {member}: weightn_conv={row['weightn_conv']}, weightn_fc={row['weightn_fc']} "
                "fit no architecture of the nwsjax family; use flat() (vectors), not params()/architecture()"
            )
        return arch

    def moving_stats(self, member: int) -> bool:
        """Whether ``member``'s vector holds the batch-norm moving statistics (its lengths say)."""
        row = self.members.loc[check_ids(self.members, [member])[0]]
        return moving_stats_of(self.architecture(member), int(row["weightn_conv"] + row["weightn_fc"]))

    def layout(self, member: int) -> list[Segment]:
        """Where each array of ``member`` sits in its flat vector."""
        return layout(self.architecture(member), self.moving_stats(member))

    def storage_parts(self, ids: Sequence[int]) -> np.ndarray:
        """``""`` for every member: each is read from its own file or rows, one at a time."""
        return np.full(len(ids), "", dtype=object)

    def flat(self, ids, snapshot: int | None = None) -> np.ndarray | list[np.ndarray]:
        """Flat weight vectors of ``ids`` at ``snapshot`` (1..K, default K), reading only their files.

        Returns:
          float32 ``[len(ids), n_weights]`` when the members share a length, else a
          list of ``[n_weights_i]`` vectors.
        """
        snapshot = check_snapshot(snapshot, self.num_snapshots)
        return stack_vectors([self._vector(i, snapshot) for i in check_ids(self.members, ids)])

    def _trees(self, ids, snapshot: int | None) -> tuple[dict, dict | None]:
        """``(params, batch_stats)`` of ``ids`` (one architecture and vector length), stacked."""
        ids = check_ids(self.members, ids)
        arch = one_architecture(self, ids)  # before reading: a length that fits no architecture is the error
        if len({self.moving_stats(i) for i in ids}) > 1:
            raise ZooError("members' vectors differ: some hold the batch-norm moving statistics, some not; "
                           "select ids of one weightn_conv")
        return unflatten(self.flat(ids, snapshot), arch)

    def params(self, ids, snapshot: int | None = None):
        """Stacked Flax params trees of ``ids`` (one architecture) at ``snapshot`` (default K).

        Returns:
          ``{layer: {name: float32 [len(ids), *shape]}}`` (see :func:`nwsjax.layout.unflatten`).
        """
        return self._trees(ids, snapshot)[0]

    def batch_stats(self, ids, snapshot: int | None = None):
        """Batch-norm moving statistics, shaped like :meth:`params`, of members whose vectors
        hold them (the released layout); ZooError for vectors without them."""
        batch_stats = self._trees(ids, snapshot)[1]
        if batch_stats is None:
            raise ZooError(
                f"these {self.info.get('format', 'format')} vectors hold no batch-norm moving statistics "
                f"(weightn_conv counts none); recompute them on data, or use vectors of the released layout"
            )
        return batch_stats


def check_columns(frame: pd.DataFrame, required: Sequence[str], where: str, what: str) -> None:
    """Raises ZooError naming the first columns of ``required`` missing from ``frame``."""
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise ZooError(f"{where}: column(s) {', '.join(missing)} missing; {what}")
