"""The cache of prepared datasets: ``<cache_dir>/<name>-<key>.npz``.

The key (:func:`cache_key`) hashes the source, the sizes and times of its files and
:data:`~nwsjax.data.preparation.PREP_VERSION`; a file whose key, version or arrays do
not check out is ignored (:func:`read_cache` returns None) and prepared again. Files
are written atomically (:func:`write_cache`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import pathlib
import re
import struct
import tempfile
import zipfile
from collections.abc import Mapping

import numpy as np

from nwsjax.data.preparation import IMAGE_SIZE, PREP_VERSION
from nwsjax.data.sources import DatasetSource, source_files, tfds_data_dir

__all__ = ["ARRAY_KEYS", "cache_key", "cache_path", "default_cache_dir", "read_cache", "write_cache"]

#: The arrays of a prepared dataset, as stored.
ARRAY_KEYS = ("train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels")


def default_cache_dir() -> pathlib.Path:
    """``$NWSJAX_CACHE/datasets``, or ``~/.cache/nwsjax/datasets`` when unset."""
    root = os.environ.get("NWSJAX_CACHE")
    base = pathlib.Path(root).expanduser() if root else pathlib.Path.home() / ".cache" / "nwsjax"
    return base / "datasets"


def cache_key(src: DatasetSource) -> str:
    """Short hash of the source, its files' sizes/times and the recipe version."""
    payload = {
        "kind": src.kind,
        "location": src.location,
        "files": source_files(src),
        "prep_version": PREP_VERSION,
    }
    if src.kind == "sklearn":
        payload["sklearn"] = importlib.metadata.version("scikit-learn")
    if src.kind == "tfds":
        payload["tfds_data_dir"] = tfds_data_dir()
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def cache_path(cache_dir: pathlib.Path, src: DatasetSource, key: str) -> pathlib.Path:
    safe = re.sub(r"[^A-Za-z0-9_.\-]", "_", src.name)
    return cache_dir / f"{safe}-{key}.npz"


def read_cache(path: pathlib.Path, key: str) -> tuple[dict[str, np.ndarray], dict] | None:
    """Arrays and metadata of a valid cache file, or None (missing or corrupt)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            arrays = {k: npz[k] for k in ARRAY_KEYS}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, TypeError, struct.error, zipfile.BadZipFile):
        return None
    if not isinstance(meta, dict) or meta.get("key") != key or meta.get("prep_version") != PREP_VERSION:
        return None
    num_classes = meta.get("num_classes")
    for split in ("train", "val", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if (
            images.dtype != np.uint8
            or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3)
            or labels.dtype != np.int32
            or labels.shape != images.shape[:1]
            or not isinstance(num_classes, int)
            or (labels.size and (labels.min() < 0 or labels.max() >= num_classes))
        ):
            return None
    return arrays, meta


def write_cache(path: pathlib.Path, arrays: Mapping[str, np.ndarray], meta: dict) -> None:
    """Write atomically: a temp file in the same folder, then ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta, sort_keys=True)), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
