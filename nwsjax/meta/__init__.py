"""Meta-classifiers: recover a network's training properties from its weights.

The public surface:

* :func:`run_meta` with :class:`MetaConfig`: a whole run (targets x models, analyses,
  report folder); ``experiments/meta.py`` is its command line.
* Data (:mod:`nwsjax.meta.data`): :class:`Target`, :func:`resolve_targets`,
  :func:`split_networks`, :func:`split_given` (a zoo's own test side), :func:`balance`, :func:`make_samples`, :class:`SliceSpec`,
  :class:`SliceStream`, :class:`UnitStream`, slice helpers (:func:`slice_bounds`, :func:`draw_starts`,
  :func:`even_starts`, :func:`take_slices`).
* Reading (:mod:`nwsjax.meta.reader`): :class:`WeightReader`, streaming flattened
  vectors out of a zoo's Orbax snapshots (or, for the public formats of
  :mod:`nwsjax.formats`, with ``zoo.flat``).
* Models (:mod:`nwsjax.meta.models`): :class:`DMC` (the reference's local deep
  meta-classifier; its deep variant is the global model), ours: :class:`SliceSet`
  (sets of slices) and :class:`UnitSet` (per-unit tokens, :func:`unit_tokens`), and
  :func:`weight_statistics` (the stats baseline's features).
* Training (:mod:`nwsjax.meta.train`): :class:`TrainSettings`, :class:`ModelOptions`,
  :func:`fit`, :func:`predict`, :func:`fit_stats`, :func:`metrics`, :func:`throughput`.
* Analyses (:mod:`nwsjax.meta.analyses`): how much (slice length), where (slice
  position), when (snapshot); :func:`run_meta` runs them.

See docs/meta.md.
"""

from nwsjax.meta.data import (
    TARGETS,
    SliceSpec,
    SliceStream,
    Samples,
    Split,
    Target,
    UnitStream,
    balance,
    draw_starts,
    even_starts,
    make_samples,
    parse_snapshots,
    resolve_targets,
    slice_bounds,
    split_given,
    split_networks,
    take_slices,
)
from nwsjax.meta.models import DMC, SliceSet, UnitSet, unit_tokens, weight_statistics
from nwsjax.meta.reader import WeightReader
from nwsjax.meta.run import ANALYSES, MetaConfig, run_meta
from nwsjax.meta.train import MODELS, ModelOptions, TrainSettings, fit, fit_stats, metrics, predict, throughput

__all__ = [
    "ANALYSES",
    "MODELS",
    "TARGETS",
    "DMC",
    "MetaConfig",
    "ModelOptions",
    "Samples",
    "SliceSet",
    "SliceSpec",
    "SliceStream",
    "Split",
    "Target",
    "TrainSettings",
    "UnitSet",
    "UnitStream",
    "WeightReader",
    "balance",
    "draw_starts",
    "even_starts",
    "fit",
    "fit_stats",
    "make_samples",
    "metrics",
    "parse_snapshots",
    "predict",
    "resolve_targets",
    "run_meta",
    "slice_bounds",
    "split_given",
    "split_networks",
    "take_slices",
    "throughput",
    "unit_tokens",
    "weight_statistics",
]
