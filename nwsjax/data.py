"""Image-classification datasets prepared the way the NWS reference trains on them.

Three kinds of source give the raw splits:

* ``"digits"``: scikit-learn's bundled 8x8 digits (offline default). It has no
  test split, so a fixed, stratified 20% is held out as test.
* a folder of MNIST-format IDX files (``"path"``, ``"name=path"``, or a name in
  :data:`KNOWN_IDX_FOLDERS` whose folder exists on this machine).
* any other name: a TensorFlow Datasets (TFDS) image-classification dataset,
  using its ``train`` and ``test`` splits.

One shared recipe (:func:`prepare`) turns raw splits into the arrays of a
:class:`Dataset`:

1. images scaled to [0, 1], grayscale replicated to 3 channels, resized
   bilinearly to 32x32 when they are another size, stored as uint8
   (``round(x * 255)``);
2. 10% of the training images held out for validation (stratified, fixed seed);
3. the rest subsampled so every class has as many images as the rarest class
   (fixed seed), its order shuffled once;
4. the test split only converted.

The prepared arrays are cached in ``<cache_dir>/<name>-<hash>.npz``; the hash
covers the source, the sizes and times of its files and :data:`PREP_VERSION`.
Every problem a user can cause raises :class:`nwsjax.errors.DatasetError` with
a one-line message that names the problem and the fix.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import re
import socket
import struct
import sys
import tempfile
import time
import types
import warnings
import zipfile
import zlib
from typing import Mapping

import numpy as np

from nwsjax.errors import DatasetError

__all__ = [
    "Dataset",
    "DatasetSource",
    "RawSplits",
    "KNOWN_IDX_FOLDERS",
    "PREP_VERSION",
    "REFERENCE_DATASETS",
    "TFDS_NAMES",
    "default_cache_dir",
    "load_dataset",
    "prepare",
    "read_idx",
    "resize_bilinear",
    "resolve_dataset",
    "balanced_subsample",
    "stratified_holdout",
    "subset",
    "to_rgb_uint8",
]

#: Bump when the preparation recipe changes: old cache files are then ignored.
PREP_VERSION = 1

IMAGE_SIZE = 32
VAL_FRACTION = 0.1
DIGITS_TEST_FRACTION = 0.2
_SEED = 2020
# One independent random stream per step of the recipe.
_STAGE_DIGITS_TEST, _STAGE_VAL, _STAGE_BALANCE = 1, 2, 3
_CHUNK = 4096  # images converted at a time (bounds float32 scratch memory)
_TFDS_BATCH = 4096  # examples per batch when reading a TFDS split

#: The datasets of the NWS reference, by their reference names.
REFERENCE_DATASETS = ("mnist", "cifar10", "svhn", "stl10", "fashion_mnist")

#: Reference names -> TFDS names; other TFDS names pass through unchanged.
TFDS_NAMES: Mapping[str, str] = types.MappingProxyType(
    {
        "mnist": "mnist",
        "cifar10": "cifar10",
        "svhn": "svhn_cropped",
        "stl10": "stl10",
        "fashion_mnist": "fashion_mnist",
    }
)

#: Names answered from a local IDX folder (the first existing one) before TFDS.
#: Debian's ``dataset-fashion-mnist`` package installs the first one.
KNOWN_IDX_FOLDERS: dict[str, tuple[str, ...]] = {
    "fashion_mnist": ("/usr/share/datasets/fashion-mnist",),
    "mnist": ("/usr/share/datasets/mnist",),
}

# Logical IDX file -> accepted file names (each also accepted with ".gz").
_IDX_FILES: Mapping[str, tuple[str, ...]] = types.MappingProxyType(
    {
        "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
        "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
        "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
        "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
    }
)
_IDX_EXPECTED = ", ".join(names[0] for names in _IDX_FILES.values()) + " (each optionally .gz)"

# IDX type byte -> numpy dtype (multi-byte types are big-endian).
_IDX_DTYPES: Mapping[int, str] = types.MappingProxyType(
    {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
)

_ARRAY_KEYS = (
    "train_images",
    "train_labels",
    "val_images",
    "val_labels",
    "test_images",
    "test_labels",
)
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_TFDS_NAME_RE = re.compile(r"[a-z0-9_]+(/[A-Za-z0-9_.\-]+)?(:[0-9.*]+)?")
_HINT_GET = (
    "use 'digits' (offline), a folder of MNIST-format IDX files (path or name=path), "
    "or a TFDS dataset: " + ", ".join(REFERENCE_DATASETS)
)


# --------------------------------------------------------------------------- #
# Public data types
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class DatasetSource:
    """Where a dataset comes from, found without reading any pixels.

    Attributes:
        name: dataset name, e.g. ``"digits"``, ``"fashion_mnist"``, ``"svhn"``.
        kind: ``"sklearn"``, ``"idx"`` or ``"tfds"``.
        location: ``"digits"`` for sklearn, the absolute folder for idx, the
            TFDS dataset name (e.g. ``"svhn_cropped"``) for tfds.
    """

    name: str
    kind: str
    location: str

    @property
    def source(self) -> str:
        """``"kind:location"``, e.g. ``"tfds:cifar10"``."""
        return f"{self.kind}:{self.location}"


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A prepared dataset: 32x32 RGB uint8 images (``v`` means ``v / 255``).

    Attributes:
        name: dataset name, e.g. ``"digits"``, ``"fashion_mnist"``, ``"cifar10"``.
        source: where it came from, e.g. ``"sklearn:digits"``, ``"tfds:cifar10"``.
        train_images: uint8 ``[n_train, 32, 32, 3]``.
        train_labels: int32 ``[n_train]``, every class the same count.
        val_images: uint8 ``[n_val, 32, 32, 3]``.
        val_labels: int32 ``[n_val]``.
        test_images: uint8 ``[n_test, 32, 32, 3]``.
        test_labels: int32 ``[n_test]``.
        num_classes: number of classes; labels lie in ``0..num_classes-1``.
    """

    name: str
    source: str
    train_images: np.ndarray
    train_labels: np.ndarray
    val_images: np.ndarray
    val_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int

    def __post_init__(self) -> None:
        for split in ("train", "val", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (
                IMAGE_SIZE,
                IMAGE_SIZE,
                3,
            ):
                raise ValueError(
                    f"{split}_images must be uint8 [n, {IMAGE_SIZE}, {IMAGE_SIZE}, 3], "
                    f"got {images.dtype} {images.shape}"
                )
            if labels.dtype != np.int32 or labels.shape != images.shape[:1]:
                raise ValueError(
                    f"{split}_labels must be int32 [{images.shape[0]}], "
                    f"got {labels.dtype} {labels.shape}"
                )

    def summary(self) -> dict:
        """Split sizes, classes and source, e.g. for logs and run metadata."""
        return {
            "name": self.name,
            "source": self.source,
            "num_classes": int(self.num_classes),
            "image_shape": tuple(int(s) for s in self.train_images.shape[1:]),
            "train": int(self.train_labels.shape[0]),
            "val": int(self.val_labels.shape[0]),
            "test": int(self.test_labels.shape[0]),
            "train_per_class": int(self.train_labels.shape[0]) // max(int(self.num_classes), 1),
        }


@dataclasses.dataclass(frozen=True, eq=False)
class RawSplits:
    """Raw train/test splits of one source, before :func:`prepare`.

    Attributes:
        train_images: ``[n, h, w]`` (grayscale) or ``[n, h, w, c]``, ``c`` in {1, 3};
            any real dtype, values in ``0..max_value``.
        train_labels: integer ``[n]``.
        test_images: like ``train_images`` with ``m`` images.
        test_labels: integer ``[m]``.
        num_classes: labels must lie in ``0..num_classes-1``.
        max_value: the pixel value that means 1.0 (255 for bytes, 16 for digits).
        origin: human-readable origin used in error messages.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    max_value: float
    origin: str


# --------------------------------------------------------------------------- #
# Small helpers
# --------------------------------------------------------------------------- #


def _error(message: str) -> DatasetError:
    """A DatasetError whose message is forced onto one line."""
    return DatasetError(" ".join(message.splitlines()))


def _say(progress: bool, message: str) -> None:
    if progress:
        print(f"[nwsjax.data] {message}", file=sys.stderr, flush=True)


def _rng(stage: int) -> np.random.Generator:
    """The fixed random stream of one step of the recipe."""
    return np.random.default_rng([_SEED, stage])


def default_cache_dir() -> pathlib.Path:
    """``$NWSJAX_CACHE/datasets``, or ``~/.cache/nwsjax/datasets`` when unset."""
    root = os.environ.get("NWSJAX_CACHE")
    base = pathlib.Path(root).expanduser() if root else pathlib.Path.home() / ".cache" / "nwsjax"
    return base / "datasets"


# --------------------------------------------------------------------------- #
# Resolving a spec
# --------------------------------------------------------------------------- #


def resolve_dataset(spec: str) -> DatasetSource:
    """Find where ``spec`` comes from, without loading pixels.

    Accepted specs: ``"digits"``; ``"name=folder"`` or a folder path of IDX
    files; a name in :data:`KNOWN_IDX_FOLDERS` whose folder exists; a reference
    name (:data:`REFERENCE_DATASETS`) or any other TFDS dataset name.
    IDX folders are checked cheaply (files present, headers consistent).

    Raises:
        DatasetError: one line naming the problem and the fix.
    """
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str) or not spec.strip():
        raise _error(f"empty or non-text dataset spec {spec!r}; {_HINT_GET}")
    spec = spec.strip()

    name, sep, folder = spec.partition("=")
    if sep and _NAME_RE.fullmatch(name):
        if not folder:
            raise _error(f"dataset spec {spec!r} has no folder after '='; write name=/path/to/idx-folder")
        return _idx_source(name, folder)
    if spec == "digits":
        return DatasetSource("digits", "sklearn", "digits")
    if _is_pathlike(spec):
        return _idx_source(None, spec)
    known = _known_idx_folder(spec)
    if known is not None:
        return _idx_source(spec, known)
    if spec in TFDS_NAMES:
        return DatasetSource(spec, "tfds", TFDS_NAMES[spec])
    if os.path.isdir(spec):
        return _idx_source(None, spec)
    if "/" in spec and not _TFDS_NAME_RE.fullmatch(spec):
        return _idx_source(None, spec)  # reports the missing folder
    _check_tfds_name(spec)
    return DatasetSource(spec, "tfds", spec)


def _is_pathlike(spec: str) -> bool:
    return spec in (".", "..") or spec.startswith(("/", "./", "../", "~")) or (
        os.sep != "/" and os.sep in spec
    )


def _known_idx_folder(name: str) -> str | None:
    """The first existing folder listed for ``name`` in KNOWN_IDX_FOLDERS."""
    for folder in KNOWN_IDX_FOLDERS.get(name, ()):
        if os.path.isdir(folder):
            return folder
    return None


def _idx_source(name: str | None, folder: str) -> DatasetSource:
    path = pathlib.Path(os.path.abspath(os.path.expanduser(folder)))
    files = _find_idx_files(path)
    _check_idx_headers(files)
    if name is None:
        name = path.name.replace("-", "_") or "idx"
    return DatasetSource(name, "idx", str(path))


def _check_tfds_name(spec: str) -> None:
    """Raise DatasetError unless ``spec`` names a registered TFDS dataset."""
    base = spec.split("/")[0].split(":")[0]
    unknown = _error(
        f"unknown dataset {spec!r}: not 'digits', not an existing folder, not in "
        f"KNOWN_IDX_FOLDERS and not a TFDS dataset; {_HINT_GET}"
    )
    if not _TFDS_NAME_RE.fullmatch(spec):
        raise unknown
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise _error(
            f"dataset {spec!r} would come from TFDS but tensorflow-datasets is not installed; "
            f"pip install tensorflow-datasets, or {_HINT_GET}"
        ) from None
    try:
        tfds.builder_cls(base)
    except Exception:  # DatasetNotFoundError, or a broken community registry
        raise unknown from None


# --------------------------------------------------------------------------- #
# IDX files
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class _IdxHeader:
    path: pathlib.Path
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int  # header length in bytes

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


def _open_idx(path: pathlib.Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _find_idx_files(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    """The four IDX files of ``folder``, by logical name (train_images, ...)."""
    if not folder.exists():
        raise _error(
            f"IDX folder {folder} does not exist; pass an existing folder holding {_IDX_EXPECTED}, "
            "or use 'digits'"
        )
    if not folder.is_dir():
        raise _error(f"{folder} is not a folder; pass a folder holding {_IDX_EXPECTED}")
    found = {}
    for key, names in _IDX_FILES.items():
        for name in names:
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file() and key not in found:
                    found[key] = candidate
    if not found:
        raise _error(f"no IDX files in {folder}; put {_IDX_EXPECTED} there, or use 'digits'")
    missing = [names[0] for key, names in _IDX_FILES.items() if key not in found]
    if missing:
        raise _error(
            f"IDX folder {folder} lacks {', '.join(missing)}; add them (optionally .gz) "
            f"so it holds {_IDX_EXPECTED}"
        )
    return found


def _read_idx_header(path: pathlib.Path) -> _IdxHeader:
    """Parse the magic number and dimensions of one IDX file (reads ~20 bytes)."""
    try:
        with _open_idx(path) as f:
            magic = f.read(4)
            ndim = magic[3] if len(magic) == 4 else 0
            dims = f.read(4 * ndim)
    except (OSError, EOFError, zlib.error) as err:
        raise _error(f"cannot read IDX file {path} ({err}); replace it with an intact copy") from None
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES or ndim == 0:
        raise _error(
            f"{path} has a wrong magic number {magic.hex() or '(empty)'}; it is not an IDX file "
            "(expected 0000 + type byte + rank, e.g. 00000803 for images), replace it"
        )
    if len(dims) < 4 * ndim:
        raise _error(f"IDX file {path} is truncated inside its header; replace it with an intact copy")
    shape = struct.unpack(f">{ndim}I", dims)
    return _IdxHeader(path, np.dtype(_IDX_DTYPES[magic[2]]), shape, 4 + 4 * ndim)


def _size_error(header: _IdxHeader, actual: int) -> DatasetError:
    how = "truncated" if actual < header.nbytes else "longer than its header says"
    return _error(
        f"IDX file {header.path} is {how}: header shape {header.shape} needs {header.nbytes} data bytes, "
        f"found {actual}; replace it with an intact copy"
    )


def _check_idx_headers(files: Mapping[str, pathlib.Path]) -> dict[str, _IdxHeader]:
    """Check the four headers agree (cheap: no pixels read, except sizes of raw files)."""
    headers = {key: _read_idx_header(path) for key, path in files.items()}
    for split in ("train", "test"):
        images, labels = headers[f"{split}_images"], headers[f"{split}_labels"]
        shape = images.shape
        if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3)):
            raise _error(
                f"{images.path} holds items of shape {shape[1:]}; images must be 2-D (rows, cols) "
                "or 3-D (rows, cols, 1 or 3 channels), use an image IDX file"
            )
        if images.dtype != np.uint8:
            raise _error(f"{images.path} holds {images.dtype} pixels; image IDX files must hold unsigned bytes (type 0x08)")
        if len(labels.shape) != 1 or labels.dtype.kind not in "iu":
            raise _error(
                f"{labels.path} has shape {labels.shape} of {labels.dtype}; a label IDX file must be "
                "1-D integers (magic 00000801), use a label file"
            )
        if labels.shape[0] != shape[0]:
            raise _error(
                f"{images.path} has {shape[0]} images but {labels.path} has {labels.shape[0]} labels; "
                "use matching image and label files"
            )
    if headers["train_images"].shape[1:] != headers["test_images"].shape[1:]:
        raise _error(
            f"train images are {headers['train_images'].shape[1:]} but test images "
            f"{headers['test_images'].shape[1:]}; use train and test files of one dataset"
        )
    for header in headers.values():
        if header.path.suffix != ".gz":
            actual = header.path.stat().st_size - header.offset
            if actual != header.nbytes:
                raise _size_error(header, actual)
    return headers


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (optionally gzipped) into an array of its header's shape.

    Returns:
        The array, in native byte order, e.g. uint8 ``[n, 28, 28]`` or ``[n]``.

    Raises:
        DatasetError: wrong magic number, unreadable or truncated file.
    """
    path = pathlib.Path(path)
    header = _read_idx_header(path)
    try:
        with _open_idx(path) as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise _error(f"cannot read IDX file {path} ({err}); replace it with an intact copy") from None
    actual = len(data) - header.offset
    if actual != header.nbytes:
        raise _size_error(header, actual)
    array = np.frombuffer(data, dtype=header.dtype, offset=header.offset).reshape(header.shape)
    return array.astype(header.dtype.newbyteorder("="), copy=False)


def _read_idx_source(src: DatasetSource) -> RawSplits:
    files = _find_idx_files(pathlib.Path(src.location))
    _check_idx_headers(files)
    arrays = {key: read_idx(path) for key, path in files.items()}
    train_labels = arrays["train_labels"].astype(np.int64)
    num_classes = int(train_labels.max()) + 1 if train_labels.size else 0
    return RawSplits(
        train_images=arrays["train_images"],
        train_labels=train_labels,
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"].astype(np.int64),
        num_classes=num_classes,
        max_value=255.0,
        origin=f"IDX folder {src.location}",
    )


# --------------------------------------------------------------------------- #
# scikit-learn digits and TFDS
# --------------------------------------------------------------------------- #


def _read_digits() -> RawSplits:
    """sklearn digits (1797 images 8x8, values 0..16), 20% stratified test."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)
    labels = np.asarray(bunch.target, dtype=np.int64)
    test_idx, train_idx = stratified_holdout(labels, DIGITS_TEST_FRACTION, _rng(_STAGE_DIGITS_TEST))
    return RawSplits(
        train_images=images[train_idx],
        train_labels=labels[train_idx],
        test_images=images[test_idx],
        test_labels=labels[test_idx],
        num_classes=10,
        max_value=16.0,
        origin="sklearn digits",
    )


def _tfds_data_dir() -> str:
    """TFDS's default data folder (without importing TFDS)."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")


def _tfds_unavailable(name: str, reason: str) -> DatasetError:
    base = name.split("/")[0].split(":")[0]
    data_dir = _tfds_data_dir()
    return _error(
        f"TFDS dataset {name!r} is not available here ({reason}); on a machine with network run "
        f"tfds.load({name!r}) (or `tfds build {base}`) and copy its data dir {data_dir}/{base} here "
        "(or set TFDS_DATA_DIR), or point at a folder of IDX files (name=path), or use 'digits'"
    )


def _network_available(timeout: float = 3.0) -> bool:
    """Whether a TFDS download could work (``NWSJAX_OFFLINE=1`` says no)."""
    if os.environ.get("NWSJAX_OFFLINE", "").strip() not in ("", "0"):
        return False
    try:
        socket.create_connection(("storage.googleapis.com", 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:200]}" if text else type(err).__name__


def _read_tfds(src: DatasetSource, progress: bool) -> RawSplits:
    """The TFDS 'train' and 'test' splits of ``src.location``, downloaded if possible."""
    name = src.location
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise _tfds_unavailable(name, "tensorflow-datasets is not installed") from None
    try:
        builder = tfds.builder(name)
    except Exception as err:  # unknown name, config or version
        raise _error(f"cannot open TFDS dataset {name!r} ({_first_line(err)}); {_HINT_GET}") from None
    prepared = builder.data_path.exists()
    if not prepared:
        if not _network_available():
            _say(progress, f"TFDS {name} is not prepared and there is no network; trying anyway")
        else:
            _say(progress, f"downloading and preparing TFDS {name} into {builder.data_dir}")
            try:
                builder.download_and_prepare()
            except Exception as err:
                raise _tfds_unavailable(name, f"download failed: {_first_line(err)}") from None
    try:
        splits = tfds.load(name, split=["train", "test"], as_supervised=True, batch_size=_TFDS_BATCH, download=False)
        (train_x, train_y), (test_x, test_y) = (_concat_batches(tfds.as_numpy(ds)) for ds in splits)
    except Exception as err:  # not prepared, corrupt files, missing split, ...
        reason = _first_line(err) if prepared else f"not downloaded to {_tfds_data_dir()} and no network"
        raise _tfds_unavailable(name, reason) from None
    train_y = np.asarray(train_y, dtype=np.int64)
    num_classes = _tfds_num_classes(builder)
    if num_classes is None:
        num_classes = int(train_y.max()) + 1 if train_y.size else 0
    return RawSplits(
        train_images=np.asarray(train_x),
        train_labels=train_y,
        test_images=np.asarray(test_x),
        test_labels=np.asarray(test_y, dtype=np.int64),
        num_classes=num_classes,
        max_value=255.0,
        origin=f"TFDS dataset {name}",
    )


def _concat_batches(batches) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate ``(images [b, h, w, c], labels [b])`` numpy batches of one split.

    Batches of fixed size rather than ``batch_size=-1``: the latter batches by the
    split size recorded in the dataset info, which is unknown (``sys.maxsize``)
    under ``tfds.testing.mock_data`` and aborts TensorFlow.
    """
    images, labels = [], []
    for x, y in batches:
        images.append(np.asarray(x))
        labels.append(np.asarray(y))
    if not images:
        raise ValueError("the split is empty")
    return np.concatenate(images), np.concatenate(labels)


def _tfds_num_classes(builder) -> int | None:
    """``num_classes`` of the builder's supervised label feature, if it has one."""
    try:
        label_key = builder.info.supervised_keys[1]
        return int(builder.info.features[label_key].num_classes)
    except Exception:  # no supervised keys or not a ClassLabel
        return None


def _read_source(src: DatasetSource, progress: bool) -> RawSplits:
    if src.kind == "sklearn":
        return _read_digits()
    if src.kind == "idx":
        return _read_idx_source(src)
    return _read_tfds(src, progress)


# --------------------------------------------------------------------------- #
# The preparation recipe
# --------------------------------------------------------------------------- #


def _bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Sparse 1-D bilinear resampling weights, as ``jax.image.resize`` computes them.

    Half-pixel centres; when shrinking, the triangle kernel is widened by the
    scale (antialiasing), as in ``jax.image.resize(method="bilinear")``.

    Returns:
        ``(index, weight)``, both ``[out_size, k]``: output pixel ``o`` is
        ``sum_j weight[o, j] * input[index[o, j]]``.
    """
    inv_scale = in_size / out_size
    sample = (np.arange(out_size) + 0.5) * inv_scale - 0.5
    dist = np.abs(sample[None, :] - np.arange(in_size)[:, None]) / max(inv_scale, 1.0)
    weights = np.maximum(0.0, 1.0 - dist)  # [in_size, out_size]
    total = weights.sum(axis=0, keepdims=True)
    weights = np.where(total > 0, weights / np.where(total > 0, total, 1.0), 0.0)
    k = max(int((weights > 0).sum(axis=0).max()), 1)
    index = np.argsort(weights <= 0, axis=0, kind="stable")[:k].T  # nonzero rows first
    weight = np.take_along_axis(weights.T, index, axis=1)
    return index.astype(np.intp), weight.astype(np.float32)


def _resample_axis(x: np.ndarray, axis: int, index: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Apply 1-D taps along ``axis`` of ``x``; elementwise, hence bit-reproducible."""
    shape = [1] * x.ndim
    shape[axis] = index.shape[0]
    out = None
    for j in range(index.shape[1]):
        term = np.take(x, index[:, j], axis=axis) * weight[:, j].reshape(shape)
        out = term if out is None else out + term
    return out


def resize_bilinear(images: np.ndarray, size: int = IMAGE_SIZE) -> np.ndarray:
    """Bilinear resize of a batch, matching ``jax.image.resize(..., "bilinear")``.

    Args:
        images: float ``[n, h, w, c]``.
        size: output height and width.

    Returns:
        float32 ``[n, size, size, c]``.
    """
    x = np.asarray(images, dtype=np.float32)
    _, h, w, _ = x.shape
    if h != size:
        x = _resample_axis(x, 1, *_bilinear_taps(h, size))
    if w != size:
        x = _resample_axis(x, 2, *_bilinear_taps(w, size))
    return x


def to_rgb_uint8(
    images: np.ndarray,
    max_value: float,
    indices: np.ndarray | None = None,
    size: int = IMAGE_SIZE,
) -> np.ndarray:
    """Scale to [0, 1], resize to ``size`` x ``size``, make RGB, store as uint8.

    Works in chunks of images, so scratch memory stays bounded.

    Args:
        images: ``[n, h, w]`` or ``[n, h, w, c]`` with ``c`` in {1, 3}, values in
            ``0..max_value``.
        max_value: pixel value meaning 1.0.
        indices: optional ``[m]`` selection (and order) of images to convert.
        size: output height and width.

    Returns:
        uint8 ``[m, size, size, 3]``: ``round(clip(x, 0, 1) * 255)``.
    """
    if indices is None:
        indices = np.arange(images.shape[0])
    out = np.empty((len(indices), size, size, 3), dtype=np.uint8)
    for start in range(0, len(indices), _CHUNK):
        chunk = images[indices[start : start + _CHUNK]]
        x = chunk.astype(np.float32) / np.float32(max_value)
        if x.ndim == 3:
            x = x[..., None]
        x = resize_bilinear(x, size)
        np.clip(x, 0.0, 1.0, out=x)
        x *= 255.0
        np.rint(x, out=x)
        out[start : start + len(chunk)] = x.astype(np.uint8)  # broadcasts 1 -> 3 channels
    return out


def stratified_holdout(
    labels: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``round(fraction * n)`` indices, spread over classes by size.

    Per-class counts are allotted by largest remainder; every class keeps at
    least one index when it has any.

    Args:
        labels: integer ``[n]``, values >= 0.

    Returns:
        ``(held_out, kept)``: sorted int64 index arrays partitioning ``0..n-1``.
    """
    labels = np.asarray(labels)
    counts = np.bincount(labels) if labels.size else np.zeros(0, np.int64)
    quota = counts * fraction
    take = np.floor(quota).astype(np.int64)
    short = int(np.floor(labels.size * fraction + 0.5)) - int(take.sum())
    if short > 0:
        take[np.argsort(-(quota - take), kind="stable")[:short]] += 1
    take = np.minimum(take, np.maximum(counts - 1, 0))
    held = [rng.permutation(np.flatnonzero(labels == c))[: take[c]] for c in range(counts.size)]
    held_out = np.sort(np.concatenate(held + [np.zeros(0, np.int64)])).astype(np.int64)
    kept = np.setdiff1d(np.arange(labels.size), held_out).astype(np.int64)
    return held_out, kept


def balanced_subsample(
    labels: np.ndarray, pool: np.ndarray, num_classes: int, rng: np.random.Generator
) -> np.ndarray:
    """Indices from ``pool`` with every class as often as the rarest one, shuffled.

    Args:
        labels: integer ``[n]`` in ``0..num_classes-1``.
        pool: int ``[p]`` candidate indices into ``labels``.

    Returns:
        int64 ``[num_classes * min_count]`` in random (seeded) order.
    """
    pool_labels = labels[pool]
    counts = np.bincount(pool_labels, minlength=num_classes)
    per_class = int(counts.min()) if num_classes else 0
    chosen = [rng.permutation(pool[pool_labels == c])[:per_class] for c in range(num_classes)]
    return rng.permutation(np.concatenate(chosen + [np.zeros(0, np.int64)])).astype(np.int64)


def _check_raw(raw: RawSplits) -> None:
    """Shapes and labels of raw splits, each failure a one-line DatasetError."""
    for split in ("train", "test"):
        images = getattr(raw, f"{split}_images")
        labels = getattr(raw, f"{split}_labels")
        if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[3] not in (1, 3)):
            raise _error(
                f"{split} images of {raw.origin} have shape {images.shape[1:]}; each image must be 2-D "
                "(rows, cols) or 3-D (rows, cols, 1 or 3 channels), use an image dataset"
            )
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise _error(
                f"{raw.origin} has {images.shape[0]} {split} images but {labels.shape} labels; "
                "use matching image and label files"
            )
        if labels.size and (labels.min() < 0 or labels.max() >= raw.num_classes):
            bad = labels[(labels < 0) | (labels >= raw.num_classes)]
            raise _error(
                f"{split} labels of {raw.origin} lie outside 0..{raw.num_classes - 1} (e.g. {int(bad[0])}); "
                "labels must be class indices seen in the training labels, fix the label file"
            )
    if raw.train_images.shape[1:3] != raw.test_images.shape[1:3]:
        raise _error(
            f"{raw.origin}: train images are {raw.train_images.shape[1:3]} but test images "
            f"{raw.test_images.shape[1:3]}; use train and test splits of one dataset"
        )
    counts = np.bincount(raw.train_labels, minlength=raw.num_classes)
    if raw.num_classes < 2 or counts.min() < 2:
        missing = np.flatnonzero(counts < 2)[:5].tolist()
        raise _error(
            f"{raw.origin} needs at least 2 classes with 2+ training images each "
            f"(classes {missing} of 0..{raw.num_classes - 1} have fewer); labels must be 0..K-1, fix the labels"
        )


def prepare(raw: RawSplits) -> dict[str, np.ndarray]:
    """The reference recipe: RGB 32x32 uint8, 10% validation, balanced train.

    Deterministic: the same raw splits give bitwise the same arrays.

    Returns:
        ``train_images`` uint8 ``[n_train, 32, 32, 3]``, ``train_labels`` int32
        ``[n_train]`` (balanced, shuffled), ``val_images``/``val_labels`` (10% of
        the raw training split, stratified), ``test_images``/``test_labels``
        (all test images, in order).
    """
    _check_raw(raw)
    train_labels = np.asarray(raw.train_labels, dtype=np.int64)
    val_idx, rest_idx = stratified_holdout(train_labels, VAL_FRACTION, _rng(_STAGE_VAL))
    train_idx = balanced_subsample(train_labels, rest_idx, raw.num_classes, _rng(_STAGE_BALANCE))
    return {
        "train_images": to_rgb_uint8(raw.train_images, raw.max_value, train_idx),
        "train_labels": train_labels[train_idx].astype(np.int32),
        "val_images": to_rgb_uint8(raw.train_images, raw.max_value, val_idx),
        "val_labels": train_labels[val_idx].astype(np.int32),
        "test_images": to_rgb_uint8(raw.test_images, raw.max_value),
        "test_labels": np.asarray(raw.test_labels).astype(np.int32),
    }


# --------------------------------------------------------------------------- #
# Cache
# --------------------------------------------------------------------------- #


def _source_files(src: DatasetSource) -> list[tuple[str, int, int]]:
    """``(path, size, mtime_ns)`` of the files a source is read from (stat only)."""
    if src.kind == "idx":
        paths = list(_find_idx_files(pathlib.Path(src.location)).values())
    elif src.kind == "sklearn":
        spec = importlib.util.find_spec("sklearn")
        roots = list(spec.submodule_search_locations or []) if spec else []
        paths = [pathlib.Path(r, "datasets", "data", "digits.csv.gz") for r in roots]
    else:
        base = src.location.split("/")[0].split(":")[0]
        root = pathlib.Path(_tfds_data_dir(), base)
        paths = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    stats = []
    for path in paths:
        if path.is_file():
            st = path.stat()
            stats.append((str(path), int(st.st_size), int(st.st_mtime_ns)))
    return stats


def _cache_key(src: DatasetSource) -> str:
    """Short hash of the source, its files' sizes/times and the recipe version."""
    payload = {
        "kind": src.kind,
        "location": src.location,
        "files": _source_files(src),
        "prep_version": PREP_VERSION,
    }
    if src.kind == "sklearn":
        payload["sklearn"] = importlib.metadata.version("scikit-learn")
    if src.kind == "tfds":
        payload["tfds_data_dir"] = _tfds_data_dir()
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _cache_path(cache_dir: pathlib.Path, src: DatasetSource, key: str) -> pathlib.Path:
    safe = re.sub(r"[^A-Za-z0-9_.\-]", "_", src.name)
    return cache_dir / f"{safe}-{key}.npz"


def _read_cache(path: pathlib.Path, key: str) -> tuple[dict[str, np.ndarray], dict] | None:
    """Arrays and metadata of a valid cache file, or None (missing or corrupt)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            arrays = {k: npz[k] for k in _ARRAY_KEYS}
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


def _write_cache(path: pathlib.Path, arrays: Mapping[str, np.ndarray], meta: dict) -> None:
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


# --------------------------------------------------------------------------- #
# Loading
# --------------------------------------------------------------------------- #


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
    folder = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    key = _cache_key(src)
    path = _cache_path(folder, src, key)
    cached = _read_cache(path, key)
    if cached is not None:
        arrays, meta = cached
        _say(progress, f"{src.name}: loaded prepared arrays from {path}")
        return Dataset(name=src.name, source=src.source, num_classes=meta["num_classes"], **arrays)

    start = time.perf_counter()
    _say(progress, f"{src.name}: reading {src.source}")
    raw = _read_source(src, progress)
    _say(progress, f"{src.name}: preparing {raw.train_images.shape[0]} train / {raw.test_images.shape[0]} test images")
    arrays = prepare(raw)
    meta = {
        "key": key,
        "prep_version": PREP_VERSION,
        "name": src.name,
        "source": src.source,
        "num_classes": int(raw.num_classes),
    }
    try:
        _write_cache(path, arrays, meta)
        _say(progress, f"{src.name}: prepared in {time.perf_counter() - start:.1f}s, cached at {path}")
    except OSError as err:
        warnings.warn(f"nwsjax: could not cache {src.name} at {path} ({err}); it will be prepared again next time")
    return Dataset(name=src.name, source=src.source, num_classes=int(raw.num_classes), **arrays)


def subset(dataset: Dataset, max_images: int) -> Dataset:
    """A smaller copy of ``dataset``: every split cut to at most ``max_images`` images.

    Each split keeps a seeded, class-balanced subset (the training split stays
    balanced), so quick studies on a big dataset keep the reference's recipe at a
    fraction of the cost. The name gets a ``@N`` suffix only in :attr:`Dataset.source`.
    """
    if max_images < dataset.num_classes:
        raise _error(
            f"max_images={max_images} is smaller than the {dataset.num_classes} classes of "
            f"{dataset.name}; use at least {dataset.num_classes}"
        )
    rng = _rng(7)
    splits = {}
    for split in ("train", "val", "test"):
        images, labels = getattr(dataset, f"{split}_images"), getattr(dataset, f"{split}_labels")
        if len(labels) > max_images:
            per_class = max_images // dataset.num_classes
            keep = np.concatenate(
                [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in range(dataset.num_classes)]
            )
            keep = rng.permutation(keep)
            images, labels = images[keep], labels[keep]
        splits[f"{split}_images"], splits[f"{split}_labels"] = images, labels
    return dataclasses.replace(dataset, source=f"{dataset.source}@{max_images}", **splits)
