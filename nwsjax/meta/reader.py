"""Streaming reads of flattened weight vectors out of a zoo, with a bounded vector cache.

:class:`WeightReader` reads any :class:`nwsjax.zoo.WeightSource` (a zoo of ours, or a
public format of :mod:`nwsjax.formats`): members the zoo stores together in a *part*
(a cohort's Orbax checkpoint, whose leaves are ``[members_in_part, K, *shape]``) are
read together, one ``zoo.flat`` call per part and snapshot, which reads only those rows
of that snapshot (:meth:`nwsjax.zoo.Zoo.read_rows`); members stored on their own (the
public formats: one vector per file or per row) are read one ``zoo.flat`` call each.
The reader hands the vectors out one request at a time; nothing is copied to disk.

Memory held by a reader (see docs/meta.md for the full bound of a meta run):

* the vector cache: flattened ``float32`` vectors kept for later epochs, at most
  ``cache_bytes`` in total; vectors are admitted while the budget lasts and never
  evicted, which for repeated full passes (epochs) is the best a bounded cache can
  do (an LRU cache would miss on every read once the working set exceeds it);
* the zoo's cache of decoded chunks, at most ``chunk_cache_bytes``
  (:attr:`nwsjax.zoo.Zoo.read_cache_bytes`): Orbax writes a leaf of a part as one
  compressed chunk, so reading one snapshot decodes the whole ``[members_in_part, K,
  *shape]`` chunk; the cache keeps it for the next snapshot;
* in flight while a part is read: one decoded chunk and the requested rows of one
  snapshot (``rows x n_weights`` floats, as a tree and flattened).

None of these grows with the number of networks or snapshots requested.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from nwsjax.zoo import DEFAULT_READ_CACHE_BYTES, WeightSource

__all__ = ["DEFAULT_CACHE_BYTES", "DEFAULT_CHUNK_CACHE_BYTES", "WeightReader"]

DEFAULT_CACHE_BYTES = 1 << 30
DEFAULT_CHUNK_CACHE_BYTES = DEFAULT_READ_CACHE_BYTES


class WeightReader:
    """Reads members' flattened weight vectors (NWS order, float32) from a zoo.

    Args:
      zoo: an opened zoo (any :class:`nwsjax.zoo.WeightSource`).
      cache_bytes: budget of the vector cache (0 disables it).
      chunk_cache_bytes: when given, the budget of the zoo's decoded-chunk cache
        (sets ``zoo.read_cache_bytes``; zoos without one have nothing to set).

    Attributes:
      counters: ``{"parts": part reads (one per part per :meth:`read`), "reads": vectors
        read from storage, "hits": vectors served from the cache}``.
      orbax: whether the zoo stores members in parts, read part by part (else one
        vector at a time).
    """

    def __init__(self, zoo: WeightSource, *, cache_bytes: int = DEFAULT_CACHE_BYTES,
                 chunk_cache_bytes: int | None = None):
        self.zoo = zoo
        self.cache_bytes = int(cache_bytes)
        if chunk_cache_bytes is not None and hasattr(zoo, "read_cache_bytes"):
            zoo.read_cache_bytes = int(chunk_cache_bytes)
        self._cache: dict[tuple[int, int], np.ndarray] = {}
        self.cached_bytes = 0
        self.counters = {"parts": 0, "reads": 0, "hits": 0}
        ids = zoo.members.index
        self._part = np.asarray(zoo.storage_parts(ids), dtype=object)
        self.orbax = bool((self._part != "").any())
        self._position = {int(m): i for i, m in enumerate(ids)}

    def parts(self, members: Sequence[int]) -> np.ndarray:
        """The storage part of each member (``""`` for every member of a zoo without
        parts): streams read a part's samples together, so each part is read once."""
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
            read = self._read_part if part else self._read_one_by_one
            yield from read(members[requests], snapshots[requests], requests)

    def _keep(self, key: tuple[int, int], vector: np.ndarray) -> np.ndarray:
        """``vector``, admitted to the cache (as a read-only copy) while the budget lasts."""
        self.counters["reads"] += 1
        if self.cached_bytes + vector.nbytes <= self.cache_bytes and key not in self._cache:
            vector = vector.copy()
            vector.flags.writeable = False
            self._cache[key] = vector
            self.cached_bytes += vector.nbytes
        return vector

    def _read_one_by_one(self, members: np.ndarray, snapshots: np.ndarray, requests: np.ndarray):
        """Vectors of members stored on their own, one ``zoo.flat`` call each, by member and snapshot."""
        for i in np.lexsort((snapshots, members)):
            member, snapshot = int(members[i]), int(snapshots[i])
            vector = np.ascontiguousarray(self.zoo.flat([member], snapshot)[0], dtype=np.float32)
            vector.flags.writeable = False
            yield int(requests[i]), self._keep((member, snapshot), vector)

    def _read_part(self, members: np.ndarray, snapshots: np.ndarray, requests: np.ndarray):
        """Vectors of members of one part: one ``zoo.flat`` call per snapshot (the part's
        members share one length)."""
        self.counters["parts"] += 1
        for snapshot in np.unique(snapshots):
            chosen = snapshots == snapshot
            unique, inverse = np.unique(members[chosen], return_inverse=True)
            vectors = np.ascontiguousarray(self.zoo.flat(unique, int(snapshot)), dtype=np.float32)
            vectors.flags.writeable = False
            for request, member, row in zip(requests[chosen], members[chosen], inverse):
                yield int(request), self._keep((int(member), int(snapshot)), vectors[row])
            del vectors
