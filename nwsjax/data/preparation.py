"""The reference's preparation recipe: raw splits to the arrays of a :class:`Dataset`.

1. images scaled to [0, 1], grayscale replicated to 3 channels, resized bilinearly to
   32x32 when they are another size, stored as uint8 (``round(x * 255)``);
2. 10% of the training images held out for validation (stratified, fixed seed);
3. the rest subsampled so every class has as many images as the rarest class (fixed
   seed), its order shuffled once;
4. the test split only converted.

:func:`prepare` runs the recipe; :func:`subset` cuts a prepared dataset down for quick
studies. Deterministic: every random step has its own fixed stream (:func:`recipe_rng`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from nwsjax.errors import DatasetError

__all__ = [
    "IMAGE_SIZE",
    "PREP_VERSION",
    "Dataset",
    "RawSplits",
    "balanced_subsample",
    "prepare",
    "recipe_rng",
    "resize_bilinear",
    "stratified_holdout",
    "subset",
    "to_rgb_uint8",
]

#: Bump when the preparation recipe changes: old cache files are then ignored.
PREP_VERSION = 1

IMAGE_SIZE = 32
VAL_FRACTION = 0.1
_SEED = 2020
# One independent random stream per step of the recipe.
STAGE_DIGITS_TEST, _STAGE_VAL, _STAGE_BALANCE, _STAGE_SUBSET = 1, 2, 3, 7
_CHUNK = 4096  # images converted at a time (bounds float32 scratch memory)


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


def recipe_rng(stage: int) -> np.random.Generator:
    """The fixed random stream of one step of the recipe."""
    return np.random.default_rng([_SEED, stage])


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

    Ours rather than ``jax.image.resize`` (or dm-pix, not a dependency): measured on one
    core (real images, uint8 after ``round(x * 255)``), jax is bitwise equal only on
    digits 8->32 (0.9 ms against our 5.2 ms for all 1797), and elsewhere neither faster
    nor bitwise: 28->32 grayscale, 4096 photo crops: 12.0 ms (jit) against 18.0 ms, but
    0.02% of the pixels differ by 1/255; 28->32 RGB: 149 ms against 114 ms (0.05% differ
    by 1/255); 96->32 RGB (STL-10), 1024 crops: 207 ms against 144 ms (``antialias=True``;
    0.05% differ by 1/255; ``antialias=False`` is another filter, 70% of the pixels differ).
    Switching would change prepared datasets, hence zoos, for no speed worth having.

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
            raise DatasetError(
                f"{split} images of {raw.origin} have shape {images.shape[1:]}; each image must be 2-D "
                "(rows, cols) or 3-D (rows, cols, 1 or 3 channels), use an image dataset"
            )
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DatasetError(
                f"{raw.origin} has {images.shape[0]} {split} images but {labels.shape} labels; "
                "use matching image and label files"
            )
        if labels.size and (labels.min() < 0 or labels.max() >= raw.num_classes):
            bad = labels[(labels < 0) | (labels >= raw.num_classes)]
            raise DatasetError(
                f"{split} labels of {raw.origin} lie outside 0..{raw.num_classes - 1} (e.g. {int(bad[0])}); "
                "labels must be class indices seen in the training labels, fix the label file"
            )
    if raw.train_images.shape[1:3] != raw.test_images.shape[1:3]:
        raise DatasetError(
            f"{raw.origin}: train images are {raw.train_images.shape[1:3]} but test images "
            f"{raw.test_images.shape[1:3]}; use train and test splits of one dataset"
        )
    counts = np.bincount(raw.train_labels, minlength=raw.num_classes)
    if raw.num_classes < 2 or counts.min() < 2:
        missing = np.flatnonzero(counts < 2)[:5].tolist()
        raise DatasetError(
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
    val_idx, rest_idx = stratified_holdout(train_labels, VAL_FRACTION, recipe_rng(_STAGE_VAL))
    train_idx = balanced_subsample(train_labels, rest_idx, raw.num_classes, recipe_rng(_STAGE_BALANCE))
    return {
        "train_images": to_rgb_uint8(raw.train_images, raw.max_value, train_idx),
        "train_labels": train_labels[train_idx].astype(np.int32),
        "val_images": to_rgb_uint8(raw.train_images, raw.max_value, val_idx),
        "val_labels": train_labels[val_idx].astype(np.int32),
        "test_images": to_rgb_uint8(raw.test_images, raw.max_value),
        "test_labels": np.asarray(raw.test_labels).astype(np.int32),
    }


def subset(dataset: Dataset, max_images: int) -> Dataset:
    """A smaller copy of ``dataset``: every split cut to at most ``max_images`` images.

    Each split keeps a seeded, class-balanced subset (the training split stays
    balanced), so quick studies on a big dataset keep the reference's recipe at a
    fraction of the cost. The name gets a ``@N`` suffix only in :attr:`Dataset.source`.
    """
    if max_images < dataset.num_classes:
        raise DatasetError(
            f"max_images={max_images} is smaller than the {dataset.num_classes} classes of "
            f"{dataset.name}; use at least {dataset.num_classes}"
        )
    rng = recipe_rng(_STAGE_SUBSET)
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
