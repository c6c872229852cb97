"""Public zoo formats, read as zoos with the API of :class:`nwsjax.zoo.Zoo` and written from our zoos.

* :mod:`nwsjax.formats.nws`: the released NWS dataset (Eilertsen et al. 2020):
  train/test CSVs, per-network ``weights/NNN.bin``, ``error.bin``, ``stat.bin``.
* :mod:`nwsjax.formats.smallcnnzoo`: the Small CNN Zoo (Unterthiner et al. 2020):
  per dataset ``weights.npy``, ``layout.csv``, ``metrics.csv.gz``.

Each module has ``open(...)`` (a zoo) and ``export(zoo, out_dir, ...)``; see docs/formats.md.
"""

from nwsjax.formats import nws, smallcnnzoo

__all__ = ["nws", "smallcnnzoo"]
