"""Image-classification datasets prepared the way the NWS reference trains on them.

Three kinds of source give the raw splits (:mod:`nwsjax.data.sources`):

* ``"digits"``: scikit-learn's bundled 8x8 digits (offline default). It has no
  test split, so a fixed, stratified 20% is held out as test.
* a folder of MNIST-format IDX files (``"path"``, ``"name=path"``, or a name in
  :data:`KNOWN_IDX_FOLDERS` whose folder exists on this machine).
* any other name: a TensorFlow Datasets (TFDS) image-classification dataset,
  using its ``train`` and ``test`` splits.

One shared recipe (:func:`prepare`, :mod:`nwsjax.data.preparation`) turns raw splits
into the arrays of a :class:`Dataset`: 32x32 RGB uint8, 10% of the training images held
out for validation, the rest class-balanced.

The prepared arrays are cached in ``<cache_dir>/<name>-<hash>.npz``
(:mod:`nwsjax.data.cache`); the hash covers the source, the sizes and times of its
files and :data:`PREP_VERSION`. :func:`load_dataset` does all three. Every problem a
user can cause raises :class:`nwsjax.errors.DatasetError` with a one-line message that
names the problem and the fix.
"""

from __future__ import annotations

import os
import pathlib
import sys
import time
import warnings
from collections.abc import Callable

from nwsjax.data.cache import cache_key, cache_path, default_cache_dir, read_cache, write_cache
from nwsjax.data.preparation import (
    PREP_VERSION,
    Dataset,
    RawSplits,
    balanced_subsample,
    prepare,
    resize_bilinear,
    stratified_holdout,
    subset,
    to_rgb_uint8,
)
from nwsjax.data.sources import (
    KNOWN_IDX_FOLDERS,
    REFERENCE_DATASETS,
    TFDS_NAMES,
    DatasetSource,
    read_idx,
    read_source,
    resolve_dataset,
)

__all__ = [
    "KNOWN_IDX_FOLDERS",
    "PREP_VERSION",
    "REFERENCE_DATASETS",
    "TFDS_NAMES",
    "Dataset",
    "DatasetSource",
    "RawSplits",
    "balanced_subsample",
    "default_cache_dir",
    "load_dataset",
    "prepare",
    "read_idx",
    "resize_bilinear",
    "resolve_dataset",
    "stratified_holdout",
    "subset",
    "to_rgb_uint8",
]


def _progress(progress: bool) -> Callable[[str], None]:
    """Prints ``[nwsjax.data] message`` to stderr when ``progress``, else nothing."""
    if not progress:
        return lambda message: None
    return lambda message: print(f"[nwsjax.data] {message}", file=sys.stderr, flush=True)


def load_dataset(
    spec: str,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> Dataset:
    """Load ``spec`` prepared by the reference recipe, from cache when possible.

    Args:
        spec: see :func:`resolve_dataset` (``"digits"``, a folder, ``name=folder``,
            a reference or TFDS name).
        cache_dir: folder of prepared ``.npz`` files; :func:`default_cache_dir`
            when None.
        progress: print what happens (reading, preparing, caching) to stderr.

    Returns:
        The :class:`Dataset`; images uint8 ``[n, 32, 32, 3]``, labels int32 ``[n]``.

    Raises:
        DatasetError: one line naming the problem and the fix.
    """
    src = resolve_dataset(spec)
    log = _progress(progress)
    folder = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key = cache_key(src)
    path = cache_path(folder, src, key)
    cached = read_cache(path, key)
    if cached is not None:
        arrays, meta = cached
        log(f"{src.name}: loaded prepared arrays from {path}")
        return Dataset(name=src.name, source=src.source, num_classes=meta["num_classes"], **arrays)

    start = time.perf_counter()
    log(f"{src.name}: reading {src.source}")
    raw = read_source(src, log)
    log(f"{src.name}: preparing {raw.train_images.shape[0]} train / {raw.test_images.shape[0]} test images")
    arrays = prepare(raw)
    meta = {
        "key": key,
        "prep_version": PREP_VERSION,
        "name": src.name,
        "source": src.source,
        "num_classes": int(raw.num_classes),
    }
    try:
        write_cache(path, arrays, meta)
        log(f"{src.name}: prepared in {time.perf_counter() - start:.1f}s, cached at {path}")
    except OSError as err:
        warnings.warn(f"nwsjax: could not cache {src.name} at {path} ({err}); it will be prepared again next time")
    return Dataset(name=src.name, source=src.source, num_classes=int(raw.num_classes), **arrays)
