"""Where a dataset's raw splits come from: names resolved, IDX files, scikit-learn's digits, TFDS.

* :func:`resolve_dataset`: a spec (``"digits"``, a folder, ``name=folder``, a reference
  or TFDS name) to a :class:`DatasetSource`, without reading pixels;
* :func:`read_source`: the source's raw train/test splits (:class:`RawSplits`);
* :func:`read_idx`: one MNIST-format IDX file;
* :func:`source_files`: the files a source is read from, with sizes and times (the
  cache key's input).

Every problem a user can cause raises :class:`nwsjax.errors.DatasetError` (one line,
with the fix).
"""

from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import os
import pathlib
import re
import socket
import struct
import types
import zlib
from collections.abc import Callable, Mapping

import numpy as np

from nwsjax.data.preparation import STAGE_DIGITS_TEST, RawSplits, recipe_rng, stratified_holdout
from nwsjax.errors import DatasetError
from nwsjax.space import REFERENCE_DATASETS

__all__ = [
    "DatasetSource",
    "KNOWN_IDX_FOLDERS",
    "REFERENCE_DATASETS",
    "TFDS_NAMES",
    "read_idx",
    "read_source",
    "resolve_dataset",
    "source_files",
    "tfds_data_dir",
]

DIGITS_TEST_FRACTION = 0.2
_TFDS_BATCH = 4096  # examples per batch when reading a TFDS split

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

_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]*")
_TFDS_NAME_RE = re.compile(r"[a-z0-9_]+(/[A-Za-z0-9_.\-]+)?(:[0-9.*]+)?")
_HINT_GET = (
    "use 'digits' (offline), a folder of MNIST-format IDX files (path or name=path), "
    "or a TFDS dataset: " + ", ".join(REFERENCE_DATASETS)
)


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
        raise DatasetError(f"empty or non-text dataset spec {spec!r}; {_HINT_GET}")
    spec = spec.strip()

    name, sep, folder = spec.partition("=")
    if sep and _NAME_RE.fullmatch(name):
        if not folder:
            raise DatasetError(f"dataset spec {spec!r} has no folder after '='; write name=/path/to/idx-folder")
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
    unknown = DatasetError(
        f"unknown dataset {spec!r}: not 'digits', not an existing folder, not in "
        f"KNOWN_IDX_FOLDERS and not a TFDS dataset; {_HINT_GET}"
    )
    if not _TFDS_NAME_RE.fullmatch(spec):
        raise unknown
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DatasetError(
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
        raise DatasetError(
            f"IDX folder {folder} does not exist; pass an existing folder holding {_IDX_EXPECTED}, "
            "or use 'digits'"
        )
    if not folder.is_dir():
        raise DatasetError(f"{folder} is not a folder; pass a folder holding {_IDX_EXPECTED}")
    found = {}
    for key, names in _IDX_FILES.items():
        for name in names:
            for candidate in (folder / name, folder / f"{name}.gz"):
                if candidate.is_file() and key not in found:
                    found[key] = candidate
    if not found:
        raise DatasetError(f"no IDX files in {folder}; put {_IDX_EXPECTED} there, or use 'digits'")
    missing = [names[0] for key, names in _IDX_FILES.items() if key not in found]
    if missing:
        raise DatasetError(
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
        raise DatasetError(f"cannot read IDX file {path} ({err}); replace it with an intact copy") from None
    if len(magic) < 4 or magic[0] != 0 or magic[1] != 0 or magic[2] not in _IDX_DTYPES or ndim == 0:
        raise DatasetError(
            f"{path} has a wrong magic number {magic.hex() or '(empty)'}; it is not an IDX file "
            "(expected 0000 + type byte + rank, e.g. 00000803 for images), replace it"
        )
    if len(dims) < 4 * ndim:
        raise DatasetError(f"IDX file {path} is truncated inside its header; replace it with an intact copy")
    shape = struct.unpack(f">{ndim}I", dims)
    return _IdxHeader(path, np.dtype(_IDX_DTYPES[magic[2]]), shape, 4 + 4 * ndim)


def _size_error(header: _IdxHeader, actual: int) -> DatasetError:
    how = "truncated" if actual < header.nbytes else "longer than its header says"
    return DatasetError(
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
            raise DatasetError(
                f"{images.path} holds items of shape {shape[1:]}; images must be 2-D (rows, cols) "
                "or 3-D (rows, cols, 1 or 3 channels), use an image IDX file"
            )
        if images.dtype != np.uint8:
            raise DatasetError(f"{images.path} holds {images.dtype} pixels; image IDX files must hold unsigned bytes (type 0x08)")
        if len(labels.shape) != 1 or labels.dtype.kind not in "iu":
            raise DatasetError(
                f"{labels.path} has shape {labels.shape} of {labels.dtype}; a label IDX file must be "
                "1-D integers (magic 00000801), use a label file"
            )
        if labels.shape[0] != shape[0]:
            raise DatasetError(
                f"{images.path} has {shape[0]} images but {labels.path} has {labels.shape[0]} labels; "
                "use matching image and label files"
            )
    if headers["train_images"].shape[1:] != headers["test_images"].shape[1:]:
        raise DatasetError(
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
        raise DatasetError(f"cannot read IDX file {path} ({err}); replace it with an intact copy") from None
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
    test_idx, train_idx = stratified_holdout(labels, DIGITS_TEST_FRACTION, recipe_rng(STAGE_DIGITS_TEST))
    return RawSplits(
        train_images=images[train_idx],
        train_labels=labels[train_idx],
        test_images=images[test_idx],
        test_labels=labels[test_idx],
        num_classes=10,
        max_value=16.0,
        origin="sklearn digits",
    )


def tfds_data_dir() -> str:
    """TFDS's default data folder (without importing TFDS)."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")


def _tfds_unavailable(name: str, reason: str) -> DatasetError:
    base = name.split("/")[0].split(":")[0]
    data_dir = tfds_data_dir()
    return DatasetError(
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


def _read_tfds(src: DatasetSource, log: Callable[[str], None]) -> RawSplits:
    """The TFDS 'train' and 'test' splits of ``src.location``, downloaded if possible."""
    name = src.location
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise _tfds_unavailable(name, "tensorflow-datasets is not installed") from None
    try:
        builder = tfds.builder(name)
    except Exception as err:  # unknown name, config or version
        raise DatasetError(f"cannot open TFDS dataset {name!r} ({_first_line(err)}); {_HINT_GET}") from None
    prepared = builder.data_path.exists()
    if not prepared:
        if not _network_available():
            log(f"TFDS {name} is not prepared and there is no network; trying anyway")
        else:
            log(f"downloading and preparing TFDS {name} into {builder.data_dir}")
            try:
                builder.download_and_prepare()
            except Exception as err:
                raise _tfds_unavailable(name, f"download failed: {_first_line(err)}") from None
    try:
        splits = tfds.load(name, split=["train", "test"], as_supervised=True, batch_size=_TFDS_BATCH, download=False)
        (train_x, train_y), (test_x, test_y) = (_concat_batches(tfds.as_numpy(ds)) for ds in splits)
    except Exception as err:  # not prepared, corrupt files, missing split, ...
        reason = _first_line(err) if prepared else f"not downloaded to {tfds_data_dir()} and no network"
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


def read_source(src: DatasetSource, log: Callable[[str], None]) -> RawSplits:
    """The raw splits of ``src``; ``log`` hears what a TFDS download does."""
    if src.kind == "sklearn":
        return _read_digits()
    if src.kind == "idx":
        return _read_idx_source(src)
    return _read_tfds(src, log)


def source_files(src: DatasetSource) -> list[tuple[str, int, int]]:
    """``(path, size, mtime_ns)`` of the files a source is read from (stat only)."""
    if src.kind == "idx":
        paths = list(_find_idx_files(pathlib.Path(src.location)).values())
    elif src.kind == "sklearn":
        spec = importlib.util.find_spec("sklearn")
        roots = list(spec.submodule_search_locations or []) if spec else []
        paths = [pathlib.Path(r, "datasets", "data", "digits.csv.gz") for r in roots]
    else:
        base = src.location.split("/")[0].split(":")[0]
        root = pathlib.Path(tfds_data_dir(), base)
        paths = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    stats = []
    for path in paths:
        if path.is_file():
            st = path.stat()
            stats.append((str(path), int(st.st_size), int(st.st_mtime_ns)))
    return stats
