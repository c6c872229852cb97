"""Tests of nwsjax.data: sources, the preparation recipe, caching and errors."""

from __future__ import annotations

import gzip
import os
import pathlib
import struct

import numpy as np
import pytest

from nwsjax import data
from nwsjax.errors import DatasetError

FMNIST = pathlib.Path("/usr/share/datasets/fashion-mnist")
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


# --------------------------------------------------------------------------- #
# Helpers
# --------------------------------------------------------------------------- #


def idx_bytes(array: np.ndarray, type_byte: int = 0x08) -> bytes:
    """An IDX file: magic 00 00 type rank, big-endian dims, then the data."""
    header = bytes([0, 0, type_byte, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def write_idx(folder: pathlib.Path, key: str, payload: bytes, gz: bool) -> pathlib.Path:
    path = folder / (IDX_NAMES[key] + (".gz" if gz else ""))
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def toy_arrays(n_train: int = 200, n_test: int = 50, size: int = 28) -> dict[str, np.ndarray]:
    """Class-balanced uint8 images; image i has value 10 * label on its left half, 200 on the right."""
    rng = np.random.default_rng(7)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = np.zeros((n, size, size), np.uint8)
        images[:, :, : size // 2] = (10 * labels)[:, None, None]
        images[:, :, size // 2 :] = 200
        images[:, 0, 0] = rng.integers(0, 256, n)  # a little texture
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    return arrays


def write_toy_folder(folder: pathlib.Path, gz: bool = False, **overrides: bytes) -> pathlib.Path:
    """A folder of the four toy IDX files; ``overrides`` replace a file's bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    for key, array in toy_arrays().items():
        write_idx(folder, key, overrides.get(key, idx_bytes(array)), gz)
    return folder


def assert_prepared(ds: data.Dataset) -> None:
    """Shapes, dtypes, label ranges and class balance of any prepared dataset."""
    for split in ("train", "val", "test"):
        images, labels = getattr(ds, f"{split}_images"), getattr(ds, f"{split}_labels")
        assert images.dtype == np.uint8 and images.shape[1:] == (32, 32, 3)
        assert labels.dtype == np.int32 and labels.shape == images.shape[:1]
        assert labels.min() >= 0 and labels.max() < ds.num_classes
    counts = np.bincount(ds.train_labels, minlength=ds.num_classes)
    assert counts.min() == counts.max() > 0


def assert_one_line_error(excinfo, *words: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message
    for word in words:
        assert word in message, (word, message)


# --------------------------------------------------------------------------- #
# digits (scikit-learn)
# --------------------------------------------------------------------------- #


def test_digits_shapes_balance_and_splits(tmp_path):
    ds = data.load_dataset("digits", cache_dir=tmp_path)
    assert_prepared(ds)
    assert (ds.name, ds.source, ds.num_classes) == ("digits", "sklearn:digits", 10)
    # 1797 images: 20% stratified test, 10% of the rest validation.
    n_test = len(ds.test_labels)
    assert n_test == round(0.2 * 1797)
    n_rest = 1797 - n_test
    assert len(ds.val_labels) == round(0.1 * n_rest)
    assert len(ds.train_labels) <= n_rest - len(ds.val_labels)
    assert np.bincount(ds.val_labels, minlength=10).min() > 0
    # Values span [0, 255] (0..16 scaled), channels replicated.
    assert ds.train_images.min() == 0 and ds.train_images.max() == 255
    assert np.array_equal(ds.train_images[..., 0], ds.train_images[..., 2])
    summary = ds.summary()
    assert summary["train"] == len(ds.train_labels) and summary["test"] == n_test
    assert summary["num_classes"] == 10 and summary["source"] == "sklearn:digits"
    assert summary["train_per_class"] * 10 == summary["train"]


def test_digits_deterministic_and_cached(tmp_path, monkeypatch):
    first = data.load_dataset("digits", cache_dir=tmp_path / "a")
    second = data.load_dataset("digits", cache_dir=tmp_path / "b")  # prepared again
    for key in ("train_images", "train_labels", "val_images", "val_labels", "test_images", "test_labels"):
        assert np.array_equal(getattr(first, key), getattr(second, key)), key
    files = list((tmp_path / "a").iterdir())
    assert len(files) == 1 and files[0].name.startswith("digits-") and files[0].suffix == ".npz"

    def boom(raw):
        raise AssertionError("prepare must not run on a cache hit")

    monkeypatch.setattr(data, "prepare", boom)
    cached = data.load_dataset("digits", cache_dir=tmp_path / "a")
    assert np.array_equal(cached.train_images, first.train_images)
    assert np.array_equal(cached.test_labels, first.test_labels)
    assert cached.num_classes == 10


def test_corrupt_cache_is_rebuilt(tmp_path):
    ds = data.load_dataset("digits", cache_dir=tmp_path)
    (path,) = tmp_path.iterdir()
    for corrupt in (path.read_bytes()[:1000], b"not a zip file"):
        path.write_bytes(corrupt)
        again = data.load_dataset("digits", cache_dir=tmp_path)
        assert np.array_equal(again.train_images, ds.train_images)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp files left behind
    assert path.stat().st_size > 1000


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("NWSJAX_CACHE", str(tmp_path))
    assert data.default_cache_dir() == tmp_path / "datasets"
    monkeypatch.delenv("NWSJAX_CACHE")
    assert data.default_cache_dir() == pathlib.Path.home() / ".cache" / "nwsjax" / "datasets"


# --------------------------------------------------------------------------- #
# IDX folders
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_conversion(tmp_path, gz):
    folder = write_toy_folder(tmp_path / "toy-set", gz=gz)
    src = data.resolve_dataset(str(folder))
    assert (src.name, src.kind, src.location) == ("toy_set", "idx", str(folder))
    ds = data.load_dataset(str(folder), cache_dir=tmp_path / "cache")
    assert_prepared(ds)
    assert ds.num_classes == 10 and ds.source == f"idx:{folder}"
    assert (len(ds.train_labels), len(ds.val_labels), len(ds.test_labels)) == (180, 20, 50)
    raw = toy_arrays()
    assert np.array_equal(ds.test_labels, raw["test_labels"])  # test split untouched, in order
    # Grayscale replicated to 3 equal channels.
    assert np.array_equal(ds.test_images[..., 0], ds.test_images[..., 1])
    assert np.array_equal(ds.test_images[..., 0], ds.test_images[..., 2])
    # 28 -> 32 bilinear: flat regions keep their value, the edge is interpolated.
    image = ds.test_images[3, :, :, 0]  # label 3: left half 30, right half 200
    assert image[16, 0] == 30 and image[16, 31] == 200 and image[31, 5] == 30
    assert np.all(np.diff(image[16].astype(int)) >= 0)  # monotone across the edge
    assert 30 < image[16, 16] < 200


def test_idx_resize_matches_jax(tmp_path):
    jax = pytest.importorskip("jax")
    raw = toy_arrays()
    rng = np.random.default_rng(0)
    raw["test_images"] = rng.integers(0, 256, raw["test_images"].shape).astype(np.uint8)
    folder = tmp_path / "rand"
    folder.mkdir()
    for key, array in raw.items():
        write_idx(folder, key, idx_bytes(array), gz=False)
    ds = data.load_dataset(f"rand={folder}", cache_dir=tmp_path / "cache")
    assert ds.name == "rand"
    x = raw["test_images"][:, :, :, None].astype(np.float32) / 255
    want = np.asarray(jax.image.resize(x, (len(x), 32, 32, 1), method="bilinear"))
    want = np.rint(np.clip(want, 0, 1) * 255)
    diff = np.abs(ds.test_images[..., :1].astype(int) - want)
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_resize_bilinear_matches_jax_for_other_sizes():
    jax = pytest.importorskip("jax")
    x = np.random.default_rng(1).random((2, 96, 40, 3)).astype(np.float32)
    want = np.asarray(jax.image.resize(x, (2, 32, 32, 3), method="bilinear"))
    assert np.allclose(data.resize_bilinear(x, 32), want, atol=1e-5)


def test_known_idx_folder_name(tmp_path, monkeypatch):
    folder = write_toy_folder(tmp_path / "somewhere", gz=True)
    monkeypatch.setitem(data.KNOWN_IDX_FOLDERS, "toyname", (str(tmp_path / "absent"), str(folder)))
    src = data.resolve_dataset("toyname")
    assert (src.name, src.kind, src.location) == ("toyname", "idx", str(folder))


def test_idx_cache_tracks_file_changes(tmp_path):
    folder = write_toy_folder(tmp_path / "toy")
    cache = tmp_path / "cache"
    data.load_dataset(str(folder), cache_dir=cache)
    labels = toy_arrays()["test_labels"].copy()
    labels[0] = 9
    path = write_idx(folder, "test_labels", idx_bytes(labels), gz=False)
    os.utime(path, ns=(1, 1))  # a different mtime, whatever the clock resolution
    ds = data.load_dataset(str(folder), cache_dir=cache)
    assert ds.test_labels[0] == 9
    assert len(list(cache.glob("toy-*.npz"))) == 2


# --------------------------------------------------------------------------- #
# Debian's Fashion-MNIST package
# --------------------------------------------------------------------------- #


@pytest.mark.skipif(not FMNIST.is_dir(), reason="Debian dataset-fashion-mnist is not installed")
def test_fashion_mnist_debian_folder(tmp_path):
    src = data.resolve_dataset("fashion_mnist")
    assert (src.kind, src.location) == ("idx", str(FMNIST))
    ds = data.load_dataset("fashion_mnist", cache_dir=tmp_path)
    assert_prepared(ds)
    assert ds.num_classes == 10
    assert (len(ds.train_labels), len(ds.val_labels), len(ds.test_labels)) == (54000, 6000, 10000)


# --------------------------------------------------------------------------- #
# TFDS (mocked, offline)
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("name, image_shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_mock_data(tmp_path, monkeypatch, name, image_shape):
    tfds = pytest.importorskip("tensorflow_datasets")
    monkeypatch.setenv("NWSJAX_OFFLINE", "1")
    with tfds.testing.mock_data(num_examples=100):
        ds = data.load_dataset(name, cache_dir=tmp_path)
    assert_prepared(ds)
    assert (ds.name, ds.source, ds.num_classes) == (name, f"tfds:{name}", 10)
    assert len(ds.test_labels) == 100 and len(ds.val_labels) == 10
    if image_shape[-1] == 1:
        assert np.array_equal(ds.test_images[..., 0], ds.test_images[..., 1])


def test_tfds_reference_names():
    assert data.resolve_dataset("svhn") == data.DatasetSource("svhn", "tfds", "svhn_cropped")
    assert data.resolve_dataset("stl10").location == "stl10"


def test_tfds_missing_offline(tmp_path, monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")
    if tfds.builder("mnist").data_path.exists():
        pytest.skip("TFDS mnist is downloaded on this machine")
    monkeypatch.setenv("NWSJAX_OFFLINE", "1")
    with pytest.raises(DatasetError) as excinfo:
        data.load_dataset("mnist", cache_dir=tmp_path)
    assert_one_line_error(excinfo, "mnist", "network", "digits", "IDX")


def test_tfds_unknown_name():
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(DatasetError) as excinfo:
        data.resolve_dataset("no_such_dataset_xyz")
    assert_one_line_error(excinfo, "no_such_dataset_xyz", "cifar10", "svhn", "digits")


# --------------------------------------------------------------------------- #
# Bad input
# --------------------------------------------------------------------------- #


def _bad_folder(tmp_path: pathlib.Path, case: str) -> pathlib.Path:
    """A folder broken in one way (see the parametrization below)."""
    raw = toy_arrays()
    folder = tmp_path / case
    if case == "missing":
        return folder
    if case == "empty":
        folder.mkdir()
        (folder / "README").write_text("nothing here")
        return folder
    if case == "partial":
        folder.mkdir()
        write_idx(folder, "train_images", idx_bytes(raw["train_images"]), gz=False)
        return folder
    if case == "truncated":
        return write_toy_folder(folder, train_images=idx_bytes(raw["train_images"])[:-100])
    if case == "truncated_gz":
        return write_toy_folder(folder, gz=True, test_images=idx_bytes(raw["test_images"])[:-7])
    if case == "magic":
        return write_toy_folder(folder, train_labels=b"\x12\x34" + idx_bytes(raw["train_labels"])[2:])
    if case == "count":
        return write_toy_folder(folder, test_labels=idx_bytes(raw["test_labels"][:-1]))
    if case == "not_2d":
        return write_toy_folder(folder, train_images=idx_bytes(raw["train_images"].reshape(200, -1)))
    if case == "labels_range":
        labels = raw["test_labels"].copy()
        labels[5] = 12
        return write_toy_folder(folder, gz=True, test_labels=idx_bytes(labels))
    raise ValueError(case)


@pytest.mark.parametrize(
    "case, words",
    [
        ("missing", ["does not exist", "train-images-idx3-ubyte"]),
        ("empty", ["no IDX files", "t10k-labels-idx1-ubyte"]),
        ("partial", ["lacks", "train-labels-idx1-ubyte"]),
        ("truncated", ["truncated", "replace"]),
        ("truncated_gz", ["replace", "t10k-images"]),
        ("magic", ["magic", "replace"]),
        ("count", ["50 images", "49 labels", "matching"]),
        ("not_2d", ["2-D", "image"]),
        ("labels_range", ["outside 0..9", "12", "fix"]),
    ],
)
def test_bad_idx_folder(tmp_path, case, words):
    folder = _bad_folder(tmp_path, case)
    with pytest.raises(DatasetError) as excinfo:
        data.load_dataset(str(folder), cache_dir=tmp_path / "cache")
    assert_one_line_error(excinfo, *words)
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


@pytest.mark.parametrize("spec", ["", "   ", "x=", "./does/not/exist"])
def test_bad_specs(tmp_path, spec):
    with pytest.raises(DatasetError) as excinfo:
        data.resolve_dataset(spec)
    assert_one_line_error(excinfo)
    assert len(str(excinfo.value)) > 20


def test_read_idx_round_trip(tmp_path):
    labels = np.arange(7, dtype=">i4")
    path = tmp_path / "labels-idx1-int"
    path.write_bytes(idx_bytes(labels, type_byte=0x0C))
    out = data.read_idx(path)
    assert out.dtype == np.int32 and out.dtype.isnative and np.array_equal(out, np.arange(7))
