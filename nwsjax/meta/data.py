"""The meta-classifiers' data: targets, splits by network, class balance, slices, batches.

Words used throughout (one name per concept):

* *network*: a zoo member; the unit of every split (all its snapshots go to one side).
* *sample*: one network at one snapshot; it carries the target's label.
* *slice*: ``length`` consecutive weights of a sample's flattened NWS vector, taken from
  the whole vector or from its conv or FC part; a *start* is its first index.

The pipeline streams: a :class:`SliceStream` reads vectors with a
:class:`~nwsjax.meta.reader.WeightReader` part by part, cuts slices into a bounded
shuffle buffer (or straight from the vector cache) and yields batches;
:class:`UnitStream` does the same with per-unit tokens of whole networks
(docs/meta.md states the memory bound).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import weakref
import zlib
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from nwsjax.errors import ConfigError
from nwsjax.meta.reader import WeightReader
from nwsjax.space import PROPERTIES, PROPERTY_NAMES
from nwsjax.zoo import Zoo, snapshot_exports

__all__ = [
    "TARGETS",
    "REGRESSION",
    "MAX_CLASSES",
    "PARTS",
    "Target",
    "Samples",
    "SliceSpec",
    "Split",
    "target_names",
    "resolve_targets",
    "accuracy_table",
    "parse_snapshots",
    "format_snapshots",
    "split_networks",
    "split_given",
    "balance",
    "labels",
    "make_samples",
    "slice_bounds",
    "draw_starts",
    "even_starts",
    "take_slices",
    "SliceStream",
    "UnitStream",
    "network_layouts",
    "prefetch",
    "rng_for",
]

REGRESSION = ("lrate", "test_acc")
TARGETS: tuple[str, ...] = (*PROPERTY_NAMES, "test_acc")
PARTS = ("whole", "conv", "fc")


def rng_for(seed: int, *names) -> np.random.Generator:
    """A numpy generator for one purpose of a run: the same seed and names give the same stream."""
    words = [int(seed)] + [zlib.crc32(str(n).encode()) for n in names]
    return np.random.default_rng(np.random.SeedSequence(words))


# --------------------------------------------------------------------------- #
# Targets
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class Target:
    """What a meta-model predicts.

    Attributes:
      name: a property column (``"optimizer"``; for a Small CNN Zoo a ``config.*``
        column), or ``"test_acc"``, the network's own test accuracy at the sampled snapshot.
      kind: ``"classification"`` or ``"regression"``.
      classes: values present in the zoo, options in the reference table's order, then
        other values sorted (classification only); label ``c`` means ``classes[c]``.
    """

    name: str
    kind: str
    classes: tuple = ()

    @property
    def num_outputs(self) -> int:
        return len(self.classes) if self.kind == "classification" else 1


MAX_CLASSES = 20  # a numeric column of a format zoo with more distinct values is a regression target
_FORMAT_NAMES = {"nws": "this NWS zoo", "smallcnnzoo": "this Small CNN Zoo"}


def target_names(zoo: Zoo) -> tuple[str, ...]:
    """The targets ``zoo`` can have: its label columns (``zoo.properties``: our 13
    properties; a Small CNN Zoo's ``config.*`` columns), then ``test_acc``."""
    return (*getattr(zoo, "properties", PROPERTY_NAMES), "test_acc")


def resolve_targets(spec: str | Sequence[str], zoo: Zoo) -> tuple[list[Target], dict[str, str]]:
    """Targets named by ``spec`` (``"optimizer,lrate"``, ``"all"``) for ``zoo``.

    ``lrate``, ``test_acc`` and, for a format zoo, numeric columns of more than
    :data:`MAX_CLASSES` values are regression targets; other columns classification
    targets over the values present.

    Returns:
      the targets, and ``{name: reason}`` for targets of ``"all"`` that were skipped
      (one class in the zoo, no test accuracy, a random seed); a target named
      explicitly raises ConfigError instead, as does a name the zoo does not have
      (the message lists the ones it has).
    """
    choices = target_names(zoo)
    choose = f"choose one or more of {', '.join(choices)}, or all"
    names = [s.strip() for s in (spec.split(",") if isinstance(spec, str) else spec) if s.strip()]
    if not names:
        raise ConfigError(f"no target given; {choose}")
    explicit = "all" not in names
    if not explicit:
        names = list(choices)
    unknown = [n for n in names if n not in choices]
    if unknown:
        if unknown[0] in TARGETS:  # one of ours that this zoo does not record
            where = _FORMAT_NAMES.get(zoo.info.get("format"), "this zoo")
            raise ConfigError(f"target {unknown[0]!r}: {where} does not record it; {choose}")
        raise ConfigError(f"unknown target {unknown[0]!r}; {choose}")
    targets, skipped = [], {}
    for name in dict.fromkeys(names):
        target, reason = _target(zoo, name)
        if reason is None and not explicit and name.endswith("seed"):
            reason = "a random seed, not a training choice"
        if reason is None:
            targets.append(target)
        elif explicit:
            raise ConfigError(f"target {name}: {reason}")
        else:
            skipped[name] = reason.split("; ")[0]
    return targets, skipped


def _target(zoo: Zoo, name: str) -> tuple[Target | None, str | None]:
    """The target ``name`` of ``zoo``, or None and why it cannot be one."""
    if name == "test_acc":
        reason = _accuracy_missing(zoo)
        return (None, reason) if reason else (Target(name, "regression"), None)
    column = zoo.members[name]
    if name in REGRESSION or (name not in PROPERTIES and _continuous(column)):
        return Target(name, "regression"), None
    present = {v for v in column.tolist() if not pd.isna(v)}
    options = PROPERTIES[name].options if name in PROPERTIES else ()
    classes = tuple(o for o in options if o in present) + tuple(sorted(present - set(options), key=str))
    if len(classes) < 2:
        return None, f"one class in this zoo ({classes[0] if classes else 'none'!s}); nothing to classify, pick another target"
    return Target(name, "classification", classes), None


def _continuous(column: pd.Series) -> bool:
    numeric = pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
    return numeric and column.nunique() > MAX_CLASSES


def labels(zoo: Zoo, target: Target, members: np.ndarray, snapshots: np.ndarray) -> np.ndarray:
    """Labels of samples: int32 class indices, or float32 values (NaN where unknown)."""
    table = zoo.members
    if target.name == "test_acc":
        return _snapshot_accuracy(zoo, members, snapshots)
    values = table.loc[members, target.name].to_numpy()
    if target.kind == "regression":
        return values.astype(np.float32)
    index = {c: i for i, c in enumerate(target.classes)}
    return np.array([index.get(v, -1) for v in values.tolist()], np.int32)


def _accuracy_missing(zoo: Zoo) -> str | None:
    """Why ``zoo`` has no test accuracy per snapshot, or None when it has one."""
    fmt = zoo.info.get("format")
    if fmt == "nws":
        return None  # error.bin of every network (read when the labels are made)
    if fmt == "smallcnnzoo":
        if "test_accuracy" in zoo.curves.columns:
            return None
        return "metrics.csv.gz has no test_accuracy column"
    if "snapshot_exports" not in zoo.members.columns or not len(zoo.curves):
        return ("the zoo has no per-epoch curves (curves.parquet) or snapshot_exports; "
                "use a zoo written by the population trainer")
    return None


def accuracy_table(zoo: Zoo) -> pd.Series:
    """Test accuracy of every network at every snapshot: float ``Series`` indexed by
    ``(member, snapshot)``, NaN where unmeasured.

    * Small CNN Zoo: the checkpoints are the snapshots; their ``test_accuracy``.
    * Our zoos and NWS: curves per epoch. Snapshot ``j`` is export
      ``snapshot_exports[j-1]`` (ours: the members table's; NWS: the reference's
      ``round(linspace(1, exports, K))`` with stat.bin's number of exports); export 1
      is the initialization (our trainer never evaluates it), export ``e`` the
      weights after epoch ``e - 1``.
    """
    curves, k = zoo.curves, zoo.num_snapshots
    if "snapshot" in curves.columns:
        return curves.set_index(["member", "snapshot"])["test_accuracy"].astype(np.float64)
    if "snapshot_exports" in zoo.members.columns:
        exports = [np.asarray(e, np.int64) for e in zoo.members["snapshot_exports"]]
    else:  # NWS: stat.bin's export count, else the rows of error.bin
        counts = zoo.stats["exports"].astype(np.float64).fillna(curves.groupby("member").size())
        exports = [snapshot_exports(int(counts[m]), k) for m in zoo.members.index]
    members = np.repeat(zoo.members.index.to_numpy(), k)
    epochs = np.concatenate(exports) - 1 if exports else np.zeros(0, np.int64)
    by_epoch = curves.set_index(["member", "epoch"])["test_acc"]
    values = by_epoch.reindex(pd.MultiIndex.from_arrays([members, epochs])).to_numpy(np.float64)
    snapshots = np.tile(np.arange(1, k + 1), len(zoo.members))
    return pd.Series(values, index=pd.MultiIndex.from_arrays([members, snapshots], names=["member", "snapshot"]))


def _snapshot_accuracy(zoo: Zoo, members: np.ndarray, snapshots: np.ndarray) -> np.ndarray:
    """Test accuracy of each sample (``members[i]`` at ``snapshots[i]``), float32; NaN where unmeasured."""
    index = pd.MultiIndex.from_arrays([np.asarray(members, np.int64), np.asarray(snapshots, np.int64)])
    return accuracy_table(zoo).reindex(index).to_numpy(np.float32)


# --------------------------------------------------------------------------- #
# Networks, snapshots, splits and balance
# --------------------------------------------------------------------------- #


def parse_snapshots(spec: str | int | Sequence[int] | None, num_snapshots: int) -> tuple[int, ...]:
    """Snapshot numbers from ``"11-20"``, ``"20"``, ``"1,5,9"`` or a sequence; None: the second half.

    Raises ConfigError when a number is outside ``1..num_snapshots``.
    """
    k = num_snapshots
    if spec is None or spec == "":
        return tuple(range(k // 2 + 1, k + 1))
    if isinstance(spec, (int, np.integer)):
        numbers = [int(spec)]
    elif isinstance(spec, str):
        numbers = []
        for piece in spec.split(","):
            piece = piece.strip()
            try:
                if "-" in piece:
                    first, last = (int(p) for p in piece.split("-", 1))
                    if first > last:
                        raise ValueError
                    numbers += range(first, last + 1)
                else:
                    numbers.append(int(piece))
            except ValueError:
                raise ConfigError(f"--snapshots {spec}: expected a range like 11-20, a number or a list like 1,5,9") from None
    else:
        numbers = [int(n) for n in spec]
    bad = [n for n in numbers if not 1 <= n <= k]
    if bad or not numbers:
        raise ConfigError(f"--snapshots {spec}: out of bounds; this zoo has snapshots 1..{k}, e.g. --snapshots {k // 2 + 1}-{k}")
    return tuple(sorted(set(numbers)))


def format_snapshots(snapshots: Sequence[int]) -> str:
    """Snapshots as :func:`parse_snapshots` reads them: ``"11-20"`` for a range, else ``"3,5,9"``."""
    snapshots = list(snapshots)
    if snapshots == list(range(snapshots[0], snapshots[-1] + 1)):
        return f"{snapshots[0]}-{snapshots[-1]}"
    return ",".join(map(str, snapshots))


@dataclasses.dataclass(frozen=True)
class Split:
    """Network ids of each side of a split (sorted int64 arrays, pairwise disjoint)."""

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sides(self) -> dict[str, np.ndarray]:
        return {"train": self.train, "val": self.val, "test": self.test}


def split_networks(ids: Sequence[int], seed: int, test_fraction: float = 0.2, val_fraction: float = 0.1) -> Split:
    """Splits networks (never snapshots) into train, validation and test.

    ``test_fraction`` of the networks go to test, then ``val_fraction`` of the rest to
    validation, by a permutation drawn from ``seed`` alone: the split does not depend
    on the target, so every target of a run is tested on the same networks.
    """
    for name, value in (("test_fraction", test_fraction), ("val_fraction", val_fraction)):
        if not 0 <= value < 1:
            raise ConfigError(f"{name}={value}: must be in [0, 1)")
    ids = np.sort(np.asarray(ids, np.int64))
    order = rng_for(seed, "split").permutation(ids)
    n_test = int(round(test_fraction * len(ids)))
    n_val = int(round(val_fraction * (len(ids) - n_test)))
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    if len(train) == 0 or len(test) == 0:
        raise ConfigError(f"{len(ids)} networks are too few to split into train and test; use a larger zoo")
    return Split(np.sort(train), np.sort(val), np.sort(test))


def split_given(ids: Sequence[int], test: Sequence[int], seed: int, val_fraction: float = 0.1) -> Split:
    """A split that keeps a given test side, e.g. a zoo's own (the NWS test CSV).

    ``ids`` in ``test`` are the test networks; ``val_fraction`` of the others go to
    validation by a permutation drawn from ``seed`` (as in :func:`split_networks`), the
    rest to train.
    """
    if not 0 <= val_fraction < 1:
        raise ConfigError(f"val_fraction={val_fraction}: must be in [0, 1)")
    ids = np.sort(np.asarray(ids, np.int64))
    is_test = np.isin(ids, np.asarray(test, np.int64))
    order = rng_for(seed, "split").permutation(ids[~is_test])
    n_val = int(round(val_fraction * len(order)))
    val, train = order[:n_val], order[n_val:]
    if len(train) == 0 or not is_test.any():
        raise ConfigError(f"the given split has {len(train)} train and {int(is_test.sum())} test networks; "
                          "both sides need networks")
    return Split(np.sort(train), np.sort(val), ids[is_test])


def balance(ids: np.ndarray, classes: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Subsamples networks so every class has as many as the rarest (the reference's class-balanced loading).

    Args:
      ids: network ids ``[n]``; classes: their class indices ``[n]`` (-1 is dropped).

    Returns:
      the kept ids, sorted; empty when a class has no network.
    """
    counts = np.bincount(classes[classes >= 0], minlength=num_classes)
    keep = int(counts.min()) if len(counts) else 0
    chosen = [rng.permutation(ids[classes == c])[:keep] for c in range(num_classes)]
    return np.sort(np.concatenate(chosen)) if chosen else ids[:0]


@dataclasses.dataclass(frozen=True)
class Samples:
    """Samples of one side of a split: parallel arrays ``[n]``.

    Attributes:
      member, snapshot: which network at which snapshot (1-based), int64.
      y: int32 class index or float32 value.
    """

    member: np.ndarray
    snapshot: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.member)

    def networks(self) -> int:
        return len(np.unique(self.member))

    def take(self, index) -> Samples:
        return Samples(self.member[index], self.snapshot[index], self.y[index])


def make_samples(zoo: Zoo, target: Target, split: Split, snapshots: Sequence[int], seed: int) -> dict[str, Samples]:
    """Samples of every side of ``split`` for ``target``: class-balanced for classification.

    Classification: networks are balanced per side (:func:`balance`), every kept
    network contributes all ``snapshots``. Regression: every network, samples whose
    value is unknown (NaN) left out.
    """
    rng = rng_for(seed, "balance", target.name)
    out = {}
    for side, ids in split.sides().items():
        if target.kind == "classification" and len(ids):
            classes = labels(zoo, target, ids, np.ones(len(ids), np.int64))
            ids = balance(ids, classes, target.num_outputs, rng)
        members = np.repeat(ids, len(snapshots))
        snaps = np.tile(np.asarray(snapshots, np.int64), len(ids))
        y = labels(zoo, target, members, snaps) if len(ids) else np.zeros(0, np.float32)
        keep = ~np.isnan(y) if target.kind == "regression" else np.ones(len(y), bool)
        out[side] = Samples(members[keep], snaps[keep], y[keep])
    for side in ("train", "test"):
        if len(out[side]) == 0:
            raise ConfigError(
                f"target {target.name}: no {side} samples after class balancing; some class has no "
                f"{side} network. Use a larger zoo or another --test-fraction"
            )
    return out


# --------------------------------------------------------------------------- #
# Slices
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class SliceSpec:
    """How slices are cut from a vector.

    Attributes:
      length: weights per slice; None for the whole vector (or part).
      part: ``"whole"``, ``"conv"`` (the prefix of ``weightn_conv`` weights) or ``"fc"``.
      count: slices per sample (several for set models).
    """

    length: int | None = 5000
    part: str = "whole"
    count: int = 1

    def __post_init__(self):
        if self.part not in PARTS:
            raise ConfigError(f"--part {self.part}: choose one of {', '.join(PARTS)}")
        if self.length is not None and self.length < 1:
            raise ConfigError(f"--slice-length {self.length}: must be a positive number of weights")
        if self.count < 1:
            raise ConfigError(f"slices per sample {self.count}: need at least 1")


def slice_bounds(n_conv: np.ndarray, n_total: np.ndarray, part: str, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Inclusive range ``[lo, hi]`` of starts so that a slice lies inside ``part``, per vector."""
    n_conv, n_total = np.asarray(n_conv, np.int64), np.asarray(n_total, np.int64)
    lo = n_conv if part == "fc" else np.zeros_like(n_conv)
    end = n_conv if part == "conv" else n_total
    return lo, end - length


def part_lengths(zoo: Zoo, members: np.ndarray, part: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(n_conv, n_total, n_part)`` per network."""
    table = zoo.members.loc[members]
    n_conv = table["weightn_conv"].to_numpy(np.int64)
    n_total = n_conv + table["weightn_fc"].to_numpy(np.int64)
    n_part = {"whole": n_total, "conv": n_conv, "fc": n_total - n_conv}[part]
    return n_conv, n_total, n_part


def check_length(zoo: Zoo, members: np.ndarray, spec: SliceSpec) -> int:
    """The slice length in effect (the part's length when ``spec.length`` is None).

    Raises ConfigError naming the shortest network when a slice does not fit.
    """
    members = np.unique(members)
    _, _, n_part = part_lengths(zoo, members, spec.part)
    shortest = int(np.argmin(n_part))
    where = "vector" if spec.part == "whole" else f"{spec.part} part"
    if spec.length is None:
        if len(set(n_part.tolist())) > 1:
            raise ConfigError(
                f"a model over the whole {where} needs networks of one length; this zoo has lengths "
                f"{n_part.min()}..{n_part.max()}. Use a fixed-architecture zoo or a slice model (dmc, set)"
            )
        return int(n_part[0])
    if spec.length > n_part[shortest]:
        raise ConfigError(
            f"--slice-length {spec.length} is longer than the {where} of network {members[shortest]} "
            f"({n_part[shortest]} weights); use --slice-length {n_part[shortest]} or less"
        )
    return int(spec.length)


def draw_starts(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, count: int) -> np.ndarray:
    """Uniform random starts in ``[lo, hi]`` (inclusive): int64 ``[len(lo), count]``."""
    lo, hi = np.asarray(lo, np.int64), np.asarray(hi, np.int64)
    return rng.integers(lo[:, None], hi[:, None] + 1, size=(len(lo), count))


def even_starts(lo: np.ndarray, hi: np.ndarray, count: int) -> np.ndarray:
    """``count`` evenly spaced starts from ``lo`` to ``hi``, rounded: int64 ``[len(lo), count]``."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    steps = np.linspace(0.0, 1.0, count)
    return np.round(lo[:, None] + (hi - lo)[:, None] * steps).astype(np.int64)


def take_slices(vector: np.ndarray, starts: np.ndarray, length: int) -> np.ndarray:
    """``vector[s : s + length]`` for every start: ``[len(starts), length]`` (a copy)."""
    windows = np.lib.stride_tricks.sliding_window_view(vector, length)
    return windows[np.asarray(starts, np.int64)]


def relative_position(starts: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Where starts sit in their range, 0 (first start) to 1 (last): float32, shaped like ``starts``."""
    span = np.maximum(np.asarray(hi) - np.asarray(lo), 1)
    return ((starts - np.asarray(lo)[:, None]) / span[:, None]).astype(np.float32)


# --------------------------------------------------------------------------- #
# Streams of batches
# --------------------------------------------------------------------------- #


@dataclasses.dataclass
class Batch:
    """A batch of samples.

    Attributes:
      x: float32 ``[B, count, length]`` slices (or ``[B, units, features]`` unit tokens).
      position: float32 ``[B, count]`` relative positions of the slices, 0..1 (or
        ``[B, units]`` the tokens' layer numbers, -1 for padding).
      y: labels ``[B]``.
      index: int64 ``[B]``: which samples (indices into the stream's Samples); -1 pads.
    """

    x: np.ndarray
    position: np.ndarray
    y: np.ndarray
    index: np.ndarray


class SliceStream:
    """Batches of slices of a set of samples, read through a :class:`WeightReader`.

    Args:
      zoo, reader: where vectors come from.
      samples: the samples to cut.
      spec: slice length, part and slices per sample.
      batch_size: samples per batch.
      buffer_bytes: budget of the shuffle buffer of cut slices.
    """

    def __init__(self, zoo: Zoo, reader: WeightReader, samples: Samples, spec: SliceSpec, *,
                 batch_size: int, buffer_bytes: int = 256 << 20):
        self.zoo, self.reader, self.samples, self.spec = zoo, reader, samples, spec
        self.batch_size = int(batch_size)
        self.length = check_length(zoo, samples.member, spec)
        n_conv, n_total, _ = part_lengths(zoo, samples.member, spec.part)
        self.lo, self.hi = slice_bounds(n_conv, n_total, spec.part, self.length)
        if spec.length is None:
            self.lo = np.zeros_like(self.lo) if spec.part != "fc" else n_conv
            self.hi = self.lo.copy()
        self.shape, self.aux = (spec.count, self.length), (spec.count,)
        self.window = max(self.batch_size, int(buffer_bytes) // (4 * int(np.prod(self.shape))))
        self.part_of = reader.parts(samples.member)

    def example(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """Zero inputs ``(x, position)`` shaped like a batch of ``batch`` samples."""
        return np.zeros((batch, *self.shape), np.float32), np.zeros((batch, *self.aux), np.float32)

    def train_epoch(self, rng: np.random.Generator) -> Iterator[Batch]:
        """Full batches over every sample once, in shuffled order, slices at fresh random starts.

        Samples are grouped in windows of whole parts (shuffled) so that each part is
        read once per epoch; inside a window the order is a full shuffle. The samples
        left over at the end (fewer than a batch) are dropped, different ones each epoch.
        The random draws do not depend on what the vector cache holds.
        """
        order = self._part_order(rng)
        carry = (order[:0], *self.example(0))
        for begin in range(0, len(order), self.window):
            window = rng.permutation(order[begin : begin + self.window])
            take = self._inputs(window, draw_starts(rng, self.lo[window], self.hi[window], self.spec.count))
            head = min(self.batch_size - len(carry[0]), len(window)) if len(carry[0]) else 0
            if head:
                rows = slice(0, head)
                carry = tuple(np.concatenate([c, a]) for c, a in zip(carry, (window[rows], *take(rows))))
                if len(carry[0]) < self.batch_size:
                    continue
                yield Batch(carry[1], carry[2], self.samples.y[carry[0]], carry[0])
            full = head + (len(window) - head) // self.batch_size * self.batch_size
            for b in range(head, full, self.batch_size):
                rows = slice(b, b + self.batch_size)
                yield Batch(*take(rows), self.samples.y[window[rows]], window[rows])
            rows = slice(full, None)
            carry = (window[rows], *(np.array(a) for a in take(rows)))

    def eval_batches(self, starts: Callable[[np.ndarray], np.ndarray]) -> Iterator[Batch]:
        """Every sample once, in part order, padded to full batches (``index`` -1).

        Args:
          starts: ``window -> int64 [len(window), count]``, the starts of each sample
            (e.g. :func:`even_starts` over ``self.lo / self.hi``, or a seeded draw).
        """
        order = self._part_order(None)
        for begin in range(0, len(order), self.window):
            window = order[begin : begin + self.window]
            take = self._inputs(window, starts(window))
            for b in range(0, len(window), self.batch_size):
                rows = slice(b, b + self.batch_size)
                pad = self.batch_size - len(window[rows])
                index = np.concatenate([window[rows], np.full(pad, -1)])
                x, p = take(rows)
                if pad:
                    x = np.concatenate([x, np.repeat(x[:1], pad, axis=0)])
                    p = np.concatenate([p, np.repeat(p[:1], pad, axis=0)])
                yield Batch(x, p, self.samples.y[np.maximum(index, 0)], index)

    def _inputs(self, window: np.ndarray, starts: np.ndarray) -> Callable[[slice], tuple[np.ndarray, np.ndarray]]:
        """``rows -> (x, position)`` of the samples ``window[rows]`` (slices at ``starts``).

        When the vector cache holds every vector of the window, inputs are made batch by
        batch (no shuffle buffer, no wait); otherwise the window is made at once, reading
        the zoo part by part, into the shuffle buffer.
        """
        if self._ready(window):
            return lambda rows: self._make(window[rows], starts[rows])
        x, position = self._make(window, starts)
        return lambda rows: (x[rows], position[rows])

    def _part_order(self, rng: np.random.Generator | None) -> np.ndarray:
        """Sample indices grouped by part; parts (and samples inside) shuffled when ``rng`` is given."""
        codes, inverse = np.unique(self.part_of, return_inverse=True)
        groups = [np.flatnonzero(inverse == c) for c in range(len(codes))]
        if rng is not None:
            groups = [rng.permutation(g) for g in (groups[i] for i in rng.permutation(len(groups)))]
        return np.concatenate(groups) if groups else np.zeros(0, np.int64)

    def _ready(self, window: np.ndarray) -> bool:
        """Whether the inputs of ``window`` can be made without reading the zoo."""
        return self.reader.holds(self.samples.member[window], self.samples.snapshot[window])

    def _make(self, window: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slices of the samples in ``window``, float32 ``[len(window), count, length]``, and their positions."""
        out = np.empty((len(window), *self.shape), np.float32)
        for i, vector in self.reader.read(self.samples.member[window], self.samples.snapshot[window]):
            out[i] = take_slices(vector, starts[i], self.length)
        return out, relative_position(starts, self.lo[window], self.hi[window])


class UnitStream(SliceStream):
    """Batches of per-unit tokens of whole networks (or one part), for the units model.

    ``x`` is float32 ``[B, units, features]`` (:func:`nwsjax.meta.models.unit_tokens`),
    ``position`` each token's layer number, -1 for padding (``units`` is the most of
    any network of the samples). Tokens do not change between epochs: they are kept
    in a cache of at most ``token_cache_bytes`` (admitted until full, as the vector cache).
    """

    def __init__(self, zoo: Zoo, reader: WeightReader, samples: Samples, part: str, *,
                 batch_size: int, buffer_bytes: int = 256 << 20, token_cache_bytes: int = 256 << 20):
        from nwsjax.meta.models import UNIT_FEATURES, unit_count

        self.zoo, self.reader, self.samples = zoo, reader, samples
        self.spec = SliceSpec(None, part, 1)
        self.batch_size = int(batch_size)
        self.layouts = network_layouts(zoo, samples.member)
        self.length = max(unit_count(segments, part) for segments in set(self.layouts.values()))
        self.shape, self.aux = (self.length, UNIT_FEATURES), (self.length,)
        self.lo = self.hi = np.zeros(len(samples), np.int64)
        self.window = max(self.batch_size, int(buffer_bytes) // (4 * int(np.prod(self.shape))))
        self.part_of = reader.parts(samples.member)
        self.token_cache_bytes, self.cached_bytes = int(token_cache_bytes), 0
        self._tokens: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _ready(self, window: np.ndarray) -> bool:
        missing = np.asarray([i for i in window.tolist() if i not in self._tokens], np.int64)
        return super()._ready(missing)

    def _make(self, window: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Tokens of the samples in ``window`` (from the token cache, else made from their vectors)."""
        from nwsjax.meta.models import unit_tokens

        x, layer = np.zeros((len(window), *self.shape), np.float32), np.full((len(window), *self.aux), -1.0, np.float32)
        todo = []
        for i, sample in enumerate(window.tolist()):
            cached = self._tokens.get(sample)
            if cached is None:
                todo.append(i)
            else:
                x[i, : len(cached[0])], layer[i, : len(cached[0])] = cached
        todo = np.asarray(todo, np.int64)
        members = self.samples.member[window[todo]]
        for j, vector in self.reader.read(members, self.samples.snapshot[window[todo]]):
            i, member = todo[j], int(members[j])
            tokens, layers = unit_tokens(vector, self.layouts[member], self.spec.part)
            x[i, : len(tokens)], layer[i, : len(tokens)] = tokens, layers
            if self.cached_bytes + tokens.nbytes + layers.nbytes <= self.token_cache_bytes:
                self._tokens[int(window[i])] = (tokens, layers)
                self.cached_bytes += tokens.nbytes + layers.nbytes
        return x, layer


_LAYOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # zoo -> {member: segments}


def network_layouts(zoo: Zoo, members: Sequence[int]) -> dict[int, tuple]:
    """``{member: its segments}`` (``zoo.layout``, as hashable tuples) of the distinct ``members``.

    Works for every zoo whose members have a layout: ours, NWS networks of our
    architecture family, and any Small CNN Zoo network. Layouts are looked up once per
    zoo and member, and equal layouts share one tuple (a zoo has few).
    """
    known = _LAYOUTS.setdefault(zoo, {})
    shared = {segments: segments for segments in {id(v): v for v in known.values()}.values()}
    ids = np.unique(np.asarray(members, np.int64)).tolist()
    for member in ids:
        if member not in known:
            segments = tuple(zoo.layout(member))
            known[member] = shared.setdefault(segments, segments)
    return {member: known[member] for member in ids}


def prefetch(iterator: Iterator, depth: int = 2) -> Iterator:
    """Runs ``iterator`` in a background thread, ``depth`` items ahead (numpy and TensorStore release the GIL).

    The items and their order are those of ``iterator``, so seeded streams stay
    deterministic. An exception in the producer is raised in the consumer.
    """
    items: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce():
        try:
            for item in iterator:
                if stop.is_set():
                    return
                items.put(item)
            items.put(done)
        except BaseException as err:  # handed to the consumer
            items.put(err)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                items.get_nowait()
            except queue.Empty:
                thread.join(0.05)


def table(samples: dict[str, Samples]) -> pd.DataFrame:
    """Networks and samples per side, for reports."""
    return pd.DataFrame(
        {side: {"networks": s.networks(), "samples": len(s)} for side, s in samples.items()}
    ).T
