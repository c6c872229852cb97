"""Public zoo formats, read as zoos with the API of :class:`nwsjax.zoo.Zoo` and written from our zoos.

* :mod:`nwsjax.formats.nws`: the released NWS dataset (Eilertsen et al. 2020):
  train/test CSVs, per-network ``weights/NNN.bin``, ``error.bin``, ``stat.bin``.
* :mod:`nwsjax.formats.smallcnnzoo`: the Small CNN Zoo (Unterthiner et al. 2020):
  per dataset ``weights.npy``, ``layout.csv``, ``metrics.csv.gz``.

Each module has ``open(...)`` (a zoo) and ``export(zoo, out_dir, ...)``; see docs/formats.md.
:func:`open_any` opens whichever a path names (what ``experiments/meta.py --zoo`` takes).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from nwsjax.errors import ConfigError
from nwsjax.formats import nws, smallcnnzoo

__all__ = ["nws", "smallcnnzoo", "open_any"]


def open_any(spec: str | os.PathLike | Sequence[str | os.PathLike]):
    """Opens a zoo of any kind from paths; comma-separated in a string, or a sequence.

    * one or more ``.csv`` files: NWS lists (:func:`nws.open`; each file's split from
      its name, e.g. ``nws_main_train.csv,nws_main_test.csv``, or given as
      ``train=a.csv,test=b.csv``);
    * folders holding ``weights.npy``, or one folder whose subfolders do (the Small CNN
      Zoo's root): Small CNN Zoo dataset folders (:func:`smallcnnzoo.open`);
    * otherwise one folder: a zoo of ours (:func:`nwsjax.zoo.open_zoo`).

    Raises ZooError or ConfigError (one line) when the paths name none of these.
    """
    from nwsjax.zoo import open_zoo

    items = str(spec).split(",") if isinstance(spec, (str, os.PathLike)) else [str(s) for s in spec]
    items = [item.strip() for item in items if item.strip()]
    if not items:
        raise ConfigError("no zoo given; pass a zoo folder, NWS CSV files or Small CNN Zoo folders")
    if any(item.lower().endswith(".csv") for item in items):
        return _open_nws(items, spec)
    paths = [Path(item) for item in items]
    if all((p / "weights.npy").is_file() for p in paths):
        return smallcnnzoo.open(paths)
    if len(paths) > 1:
        raise ConfigError(f"{spec}: several paths, but not all Small CNN Zoo folders (weights.npy) or NWS CSV "
                          "files; pass one zoo folder, CSV files, or Small CNN Zoo folders")
    root = paths[0]
    datasets = sorted(d for d in root.iterdir() if (d / "weights.npy").is_file()) if root.is_dir() else []
    if datasets and not (root / "zoo.json").is_file():
        return smallcnnzoo.open(datasets)
    return open_zoo(root)


def _open_nws(items: list[str], spec) -> nws.NWSZoo:
    """NWS lists from ``path.csv`` items (split from the file name) or ``train=``/``test=`` items."""
    keyed = [item.partition("=") for item in items]
    if not all(item.lower().endswith(".csv") for item in items):
        raise ConfigError(f"{spec}: mixes CSV files and folders; pass NWS CSV files or folders, not both")
    if any(sep for _, sep, _ in keyed):
        keys = [key for key, _, _ in keyed]
        if not all(sep and key in nws.SPLITS for key, sep, _ in keyed) or len(set(keys)) < len(keys):
            raise ConfigError(f"{spec}: give one train=PATH and one test=PATH, or plain paths (splits from the names)")
        return nws.open({key: path for key, _, path in keyed})
    for item in items:
        stem = Path(item).stem.lower()
        if "train" not in stem and "test" not in stem:
            raise ConfigError(f"{item}: cannot tell whether this is the train or test list from its name; "
                              f"pass it as train={item} or test={item}")
    return nws.open(items)
