"""The analyses of a meta run: how much (slice length), where (slice position), when (snapshot).

Each takes the run (:class:`nwsjax.meta.run.Run`: zoo, reader, config, split, report
folder) and one target, retrains or re-evaluates models through
:meth:`~nwsjax.meta.run.Run.train_and_test`, writes its plot and returns its rows for
``results.json``. docs/meta.md describes what each measures.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from nwsjax.errors import ConfigError
from nwsjax.meta import report
from nwsjax.meta.data import (
    Samples,
    SliceSpec,
    SliceStream,
    Target,
    format_snapshots,
    make_samples,
    network_layouts,
    part_lengths,
)
from nwsjax.meta.train import SLICE_MODELS, eval_stream, evenly, headline, metrics, predict

if TYPE_CHECKING:
    from nwsjax.meta.run import Run

__all__ = ["DEFAULT_SLICE_LENGTHS", "slice_length", "where", "boundaries", "when"]

DEFAULT_SLICE_LENGTHS = (500, 1000, 2500, 5000, 10000, 20000, 40000)


def slice_length(run: Run, target: Target, samples, chance: float) -> list[dict]:
    """Accuracy (or MAE) versus slice length, per slice model."""
    _, _, n_part = part_lengths(run.zoo, np.unique(np.concatenate([s.member for s in samples.values()])), run.config.part)
    shortest = int(n_part.min())
    lengths = run.config.slice_lengths or tuple(n for n in DEFAULT_SLICE_LENGTHS if n <= shortest) or (shortest,)
    too_long = [n for n in lengths if n > shortest]
    if too_long:
        raise ConfigError(f"--slice-lengths {too_long[0]} is longer than the shortest vector or part ({shortest} weights); use smaller lengths")
    rows = []
    for model in (m for m in run.models if m in SLICE_MODELS):
        for length in sorted(set(lengths)):
            result, _ = run.train_and_test(target, model, samples, length, run.snapshots, validate=False)
            rows.append({"model": model, "length": length,
                         "single": headline(target, result["single"]),
                         "ensemble": headline(target, result["ensemble"])})
            run.log(f"  slice length {length:6d} {model}: 1 slice {rows[-1]['single']:.4g}, ensemble {rows[-1]['ensemble']:.4g}")
    if rows:
        report.plot_slice_length(run.out / f"slice-length-{target.name}.png", rows, target.kind, chance,
                                 f"{target.name}: how much (snapshots {format_snapshots(run.snapshots)}, part {run.config.part})")
    return rows


def where(run: Run, target: Target, samples, fitted, model: str, chance: float) -> dict:
    """Per-slice outputs at evenly spaced positions along the network, each slice on its own."""
    test = samples["test"]
    spec = SliceSpec(run.config.slice_length, run.config.part, run.config.positions)
    stream = eval_stream(run.zoo, run.reader, test, spec, run.config.train)
    outputs = predict(fitted, stream, evenly(stream), each_slice=True, per_slice=True,
                      progress=f"{target.name} {model} where" if run.config.train.progress else None)  # [n, P, (C)]
    metric, prob_true = [], []
    for p in range(run.config.positions):
        m = metrics(target, outputs[:, p], test)
        metric.append(headline(target, m))
        if target.kind == "classification":
            prob_true.append(float(outputs[np.arange(len(test)), p, test.y].mean()))
    arch_label, layers = boundaries(run, test, stream)
    result = {"position": np.linspace(0, 1, run.config.positions).tolist(), "metric": metric,
              "architecture": arch_label, "boundaries": layers}
    if prob_true:
        result["prob_true"] = prob_true
    report.plot_where(run.out / f"where-{target.name}-{model}.png", result, target.kind, chance,
                      f"{target.name}, {model}: where (slice length {stream.length}, part {run.config.part})")
    return result


def boundaries(run: Run, test: Samples, stream: SliceStream) -> tuple[str, list[dict]]:
    """Layer starts of the most common test layout, as relative slice positions (slice centre on the boundary).

    Returns the layout's label (its architecture, or the first network that has it)
    and one ``{"layer", "offset", "position"}`` per layer.
    """
    of = network_layouts(run.zoo, test.member)
    segments = collections.Counter(of[int(m)] for m in test.member).most_common(1)[0][0]
    member = next(int(m) for m in test.member if of[int(m)] == segments)
    i = int(np.flatnonzero(test.member == member)[0])
    lo, hi, length = stream.lo[i], stream.hi[i], stream.length
    layers, seen = [], set()
    for segment in segments:
        if segment.layer in seen:
            continue
        seen.add(segment.layer)
        position = (segment.offset - length / 2 - lo) / max(hi - lo, 1)
        layers.append({"layer": segment.layer, "offset": segment.offset, "position": float(position)})
    label = run.zoo.members["architecture"].get(member) if "architecture" in run.zoo.members else None
    return (str(label) if label is not None and not pd.isna(label) else f"network {member}"), layers


def when(run: Run, target: Target, chance: float) -> list[dict]:
    """Train and test on single snapshots, for every snapshot of the zoo."""
    rows = []
    for snapshot in range(1, run.zoo.num_snapshots + 1):
        try:
            samples = make_samples(run.zoo, target, run.split, (snapshot,), run.config.seed)
        except ConfigError as err:  # e.g. test_acc at the initialization: never measured
            run.log(f"  snapshot {snapshot}: skipped ({err})")
            continue
        for model in run.models:
            result, _ = run.train_and_test(target, model, samples, run.config.slice_length, (snapshot,), validate=False)
            best = result.get("ensemble") or result["single"]
            rows.append({"model": model, "snapshot": snapshot, "value": headline(target, best)})
            run.log(f"  snapshot {snapshot:3d} {model}: {rows[-1]['value']:.4g}")
    if rows:
        report.plot_when(run.out / f"when-{target.name}.png", rows, target.kind, chance,
                         f"{target.name}: when (trained and tested on one snapshot)")
    return rows
