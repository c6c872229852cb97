"""Streaming reads of flattened weight vectors out of a zoo's stacked Orbax snapshots.

A zoo stores each cohort's members as Orbax checkpoints ("parts") whose leaves are
``[members_in_part, K, *shape]`` (:mod:`nwsjax.zoo`). :class:`WeightReader` reads
only the rows and the one snapshot it needs from each leaf (TensorStore, the storage
layer under Orbax), flattens them in NWS order (:func:`nwsjax.model.flatten`) and
hands the vectors out one request at a time. Nothing is copied to disk.

Zoos without Orbax parts (no ``part`` / ``row`` columns: the public formats of
:mod:`nwsjax.formats`, which store one vector per file or per row) are read vector by
vector with ``zoo.flat``, through the same cache.

Memory held by a reader (see docs/meta.md for the full bound of a meta run):

* the vector cache: flattened ``float32`` vectors kept for later epochs, at most
  ``cache_bytes`` in total; vectors are admitted while the budget lasts and never
  evicted, which for repeated full passes (epochs) is the best a bounded cache can
  do (an LRU cache would miss on every read once the working set exceeds it);
* TensorStore's chunk cache, at most ``chunk_cache_bytes``: Orbax writes a leaf of a
  part as one compressed chunk, so reading one snapshot decodes the whole
  ``[members_in_part, K, *shape]`` chunk; the cache keeps it for the next snapshot;
* in flight while a part is read: one decoded chunk and the requested rows of one
  snapshot (``rows x n_weights`` floats, as a tree and flattened).

None of these grows with the number of networks or snapshots requested.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from nwsjax.errors import ZooError
from nwsjax.model import flatten, layout
from nwsjax.zoo import Zoo

__all__ = ["WeightReader", "DEFAULT_CACHE_BYTES", "DEFAULT_CHUNK_CACHE_BYTES"]

DEFAULT_CACHE_BYTES = 1 << 30
DEFAULT_CHUNK_CACHE_BYTES = 512 << 20


class WeightReader:
    """Reads members' flattened weight vectors (NWS order, float32) from a zoo.

    Args:
      zoo: an opened zoo.
      cache_bytes: budget of the vector cache (0 disables it).
      chunk_cache_bytes: budget of TensorStore's decoded-chunk cache.

    Attributes:
      counters: ``{"parts": leaf-part openings, "reads": vectors read from storage,
        "hits": vectors served from the cache}``.
      orbax: whether the zoo is read part by part from its Orbax snapshots (else with
        ``zoo.flat``, one vector at a time).
    """

    def __init__(self, zoo: Zoo, *, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 chunk_cache_bytes: int = DEFAULT_CHUNK_CACHE_BYTES):
        import tensorstore as ts

        self.zoo = zoo
        self.cache_bytes = int(cache_bytes)
        self._context = ts.Context({"cache_pool": {"total_bytes_limit": int(chunk_cache_bytes)}})
        self._cache: dict[tuple[int, int], np.ndarray] = {}
        self.cached_bytes = 0
        self.counters = {"parts": 0, "reads": 0, "hits": 0}
        members = zoo.members
        self.orbax = {"part", "row"} <= set(members.columns)
        self._part = members["part"].to_numpy() if self.orbax else np.full(len(members), "")
        self._row = members["row"].to_numpy().astype(np.int64) if self.orbax else np.zeros(len(members), np.int64)
        self._position = {int(m): i for i, m in enumerate(members.index)}

    def parts(self, members: Sequence[int]) -> np.ndarray:
        """The storage part of each member (``""`` for every member of a zoo without Orbax
        parts): streams read a part's samples together, so each part is opened once."""
        return self._part[[self._position[int(m)] for m in members]]

    def holds(self, members: Sequence[int], snapshots: Sequence[int]) -> bool:
        """Whether the cache holds every requested vector (reading them touches no storage)."""
        return all((int(m), int(s)) in self._cache for m, s in zip(members, snapshots))

    def read(self, members: Sequence[int], snapshots: Sequence[int]) -> Iterator[tuple[int, np.ndarray]]:
        """Yields ``(i, vector)`` for every request ``i`` (member ``members[i]`` at snapshot ``snapshots[i]``).

        Cached vectors come first, then the rest part by part, snapshot by snapshot
        (requests are not yielded in order). Vectors are read-only ``float32 [n_weights]``;
        copy what you keep beyond the cache.
        """
        members = np.asarray(members, np.int64)
        snapshots = np.asarray(snapshots, np.int64)
        pending: dict[str, list[int]] = {}
        for i, (member, snapshot) in enumerate(zip(members.tolist(), snapshots.tolist())):
            vector = self._cache.get((member, snapshot))
            if vector is not None:
                self.counters["hits"] += 1
                yield i, vector
                continue
            pending.setdefault(self._part[self._position[member]], []).append(i)
        for part in sorted(pending):
            requests = np.asarray(pending[part])
            read = self._read_part if self.orbax else self._read_flat
            yield from read(part, members[requests], snapshots[requests], requests)

    def _keep(self, key: tuple[int, int], vector: np.ndarray) -> np.ndarray:
        """``vector``, admitted to the cache (as a read-only copy) while the budget lasts."""
        self.counters["reads"] += 1
        if self.cached_bytes + vector.nbytes <= self.cache_bytes and key not in self._cache:
            vector = vector.copy()
            vector.flags.writeable = False
            self._cache[key] = vector
            self.cached_bytes += vector.nbytes
        return vector

    def _read_flat(self, part: str, members: np.ndarray, snapshots: np.ndarray, requests: np.ndarray):
        """Vectors of a zoo without Orbax parts, one ``zoo.flat`` call each, by member and snapshot."""
        for i in np.lexsort((snapshots, members)):
            member, snapshot = int(members[i]), int(snapshots[i])
            vector = np.ascontiguousarray(self.zoo.flat([member], snapshot)[0], dtype=np.float32)
            vector.flags.writeable = False
            yield int(requests[i]), self._keep((member, snapshot), vector)

    def _read_part(self, part: str, members: np.ndarray, snapshots: np.ndarray, requests: np.ndarray):
        arch = self.zoo.architecture(int(members[0]))
        positions = [self._position[int(m)] for m in members]
        rows = self._row[positions]
        leaves = self._open(part, arch)
        for snapshot in np.unique(snapshots):
            chosen = snapshots == snapshot
            unique_rows, inverse = np.unique(rows[chosen], return_inverse=True)
            params: dict[str, dict[str, np.ndarray]] = {}
            for (layer, name), store in leaves.items():
                params.setdefault(layer, {})[name] = store.oindex[unique_rows, int(snapshot) - 1].read().result()
            vectors = np.ascontiguousarray(flatten(params, arch), dtype=np.float32)
            del params
            vectors.flags.writeable = False
            for request, member, row_index in zip(requests[chosen], members[chosen], inverse):
                yield int(request), self._keep((int(member), int(snapshot)), vectors[row_index])
            del vectors

    def _open(self, part: str, arch) -> dict[tuple[str, str], object]:
        """Opens the parameter leaves of one part as TensorStore arrays ``[rows, K, *shape]``."""
        import tensorstore as ts

        directory = (self.zoo.path / part).absolute()
        metadata = _metadata(directory)
        driver = "zarr3" if metadata.get("use_zarr3") else "zarr"
        stores = {}
        for segment in layout(arch):
            key = ".".join(("params", *segment.path))
            if metadata.get("use_ocdbt", True):
                kvstore = {"driver": "ocdbt", "base": f"file://{directory}", "path": key}
            else:
                kvstore = {"driver": "file", "path": str(directory / key)}
            try:
                store = ts.open({"driver": driver, "kvstore": kvstore}, context=self._context, read=True).result()
            except ValueError as err:
                raise ZooError(
                    f"{directory}: cannot read leaf {key} ({str(err).splitlines()[0][:120]}); the zoo is "
                    "incomplete or of another storage layout, retrain or restore it"
                ) from None
            expected = (self.zoo.num_snapshots, *segment.shape)
            if tuple(store.shape[1:]) != expected:
                raise ZooError(
                    f"{directory}: leaf {key} has shape {tuple(store.shape)}, expected [rows, *{expected}]; "
                    "the members table does not match the snapshots, retrain the zoo"
                )
            stores[segment.path] = store
        self.counters["parts"] += 1
        return stores


def _metadata(directory: Path) -> dict:
    path = directory / "_METADATA"
    if not path.is_file():
        raise ZooError(f"{directory}: snapshot checkpoint missing or unfinished; the zoo is incomplete, retrain or restore it")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        raise ZooError(f"{path}: unreadable; the zoo is corrupt, retrain it") from None
