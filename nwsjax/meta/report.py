"""Tables and plots of a meta run (matplotlib figures made without pyplot; PNG files)."""

from __future__ import annotations

import json
import os
import math
from pathlib import Path

import numpy as np

__all__ = ["format_target", "format_summary", "read_reports", "markdown_tables", "plot_confusion", "plot_learning_curve",
           "plot_slice_length", "plot_where", "plot_when", "write_json"]


def _pct(value, ci=None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{100 * value:5.1f}%"
    return text + (f" ± {100 * ci:4.1f}" if ci is not None and not math.isnan(ci) else "")


def _num(value, ci=None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:.4g}"
    return text + (f" ± {ci:.2g}" if ci is not None and not math.isnan(ci) else "")


def format_target(name: str, entry: dict, ensemble: int) -> str:
    """The table of one target: networks, chance, each model's test numbers."""
    sides = entry["samples"]
    head = ", ".join(f"{side} {v['networks']} networks / {v['samples']} samples" for side, v in sides.items())
    lines = []
    if entry["kind"] == "classification":
        lines.append(f"== {name}: {len(entry['classes'])} classes, chance {_pct(entry['chance'])} ==")
        lines.append(head)
        lines.append(f"{'model':8s} {'1 slice':>16s} {f'{ensemble} slices, vote':>18s} {f'{ensemble}, per slice':>16s} "
                     f"{'train':>7s} {'val':>7s} {'steps':>6s} {'seconds':>8s}")
        for model, r in entry["models"].items():
            single, ens, each = r["single"], r.get("ensemble"), r.get("per_slice")
            lines.append(
                f"{model:8s} {_pct(single['accuracy'], single['ci95']):>16s} "
                f"{_pct(ens['accuracy'], ens['ci95']) if ens else '-':>18s} "
                f"{_pct(each['accuracy'], each['ci95']) if each else '-':>16s} "
                f"{_pct(r.get('train_eval')):>7s} {_pct(r.get('val')):>7s} {r.get('steps', '-'):>6} {r['seconds']:8.1f}"
            )
    else:
        lines.append(f"== {name}: regression, chance MAE {_num(entry['chance'])} (the training median) ==")
        lines.append(head)
        lines.append(f"{'model':8s} {'MAE 1 slice':>18s} {f'MAE {ensemble} slices':>18s} {'Spearman':>9s} "
                     f"{'Kendall':>8s} {'R^2':>7s} {'seconds':>8s}")
        for model, r in entry["models"].items():
            single, ens = r["single"], r.get("ensemble")
            best = ens or single
            lines.append(
                f"{model:8s} {_num(single['mae'], single['ci95']):>18s} "
                f"{_num(ens['mae'], ens['ci95']) if ens else '-':>18s} {best['spearman']:9.3f} "
                f"{best.get('kendall_tau', float('nan')):8.3f} {best.get('r2', float('nan')):7.3f} {r['seconds']:8.1f}"
            )
    return "\n".join(lines)


def format_summary(summary: dict) -> str:
    """Accuracy per categorical target and model side by side, and the mean over targets."""
    rows, models = summary["targets"], summary["models"]
    if not rows:
        return ""
    lines = [f"accuracy on test networks (slice models: {summary['ensemble']} evenly spaced slices)",
             f"{'target':16s} {'chance':>7s} " + " ".join(f"{m:>7s}" for m in models)]
    for name, row in rows.items():
        lines.append(f"{name:16s} {_pct(row['chance']):>7s} " + " ".join(f"{_pct(row.get(m)):>7s}" for m in models))
    lines.append(f"{'mean':16s} {_pct(summary['mean']['chance']):>7s} "
                 + " ".join(f"{_pct(summary['mean'].get(m)):>7s}" for m in models))
    return "\n".join(lines)


def read_reports(specs: list[str]) -> list[tuple[dict, str]]:
    """Reads meta report folders for :func:`markdown_tables`.

    Args:
      specs: report folders, each optionally ``FOLDER@TAG``: its models are then
        named ``model-TAG`` (to keep two runs of one model apart).

    Returns:
      ``(results.json contents, tag or "")`` per folder. Raises ConfigError when a
      folder holds no finished report, or when the reports differ in zoo, split or
      snapshots (their numbers would not be comparable side by side).
    """
    from nwsjax.errors import ConfigError

    reports = []
    for spec in specs:
        folder, _, tag = spec.partition("@")
        path = Path(folder) / "results.json"
        try:
            results = json.loads(path.read_text())
        except (OSError, ValueError):
            raise ConfigError(f"{folder}: no readable results.json; give report folders written by meta.py") from None
        if "summary" not in results:
            raise ConfigError(f"{folder}: its meta run has not finished (results.json has no summary); wait for it or rerun it")
        reports.append((results, tag))
    first = reports[0][0]
    same = lambda r: (r["zoo"]["path"], r.get("split"), r.get("snapshots"))  # noqa: E731
    for (results, _), spec in zip(reports[1:], specs[1:]):
        if same(results) != same(first):
            raise ConfigError(f"{spec.partition('@')[0]}: another zoo, split or snapshot range than {specs[0]}; "
                              "side-by-side tables need runs of one zoo with one --seed and --snapshots")
    return reports


def markdown_tables(reports: list[tuple[dict, str]]) -> str:
    """Markdown tables of several meta runs of one zoo, models side by side.

    Categorical targets: test accuracy with its 95% interval (the ensemble for slice
    models) and the mean over targets, for the targets every model has; regression
    targets: mean absolute error and Spearman's rank correlation. A target's chance
    level comes from the first report that has it. A model that two reports hold for
    one target must be told apart with a tag (:func:`read_reports`).
    """
    from nwsjax.errors import ConfigError

    columns: dict[str, dict] = {}  # model name -> {target: result}
    targets: dict[str, dict] = {}
    for results, tag in reports:
        for name, entry in results["targets"].items():
            targets.setdefault(name, entry)
            for model, result in entry["models"].items():
                column = columns.setdefault(f"{model}-{tag}" if tag else model, {})
                if name in column:
                    raise ConfigError(f"model {model} on target {name} is in two of the reports; name one of them "
                                      "FOLDER@TAG to show both")
                column[name] = result
    models = list(columns)

    def best(result):
        return result.get("ensemble") or result["single"]

    lines = []
    categorical = [t for t, e in targets.items() if e["kind"] == "classification"]
    if categorical:
        lines += ["| target | chance | " + " | ".join(models) + " |", "|---" * (len(models) + 2) + "|"]
        for name in categorical:
            cells = [f"{100 * best(columns[m][name])['accuracy']:.1f}% ± {100 * best(columns[m][name])['ci95']:.1f}"
                     if name in columns[m] else "-" for m in models]
            lines.append(f"| {name} ({len(targets[name]['classes'])}) | {100 * targets[name]['chance']:.1f}% | " + " | ".join(cells) + " |")
        shared = [t for t in categorical if all(t in columns[m] for m in models)]
        means = [np.mean([best(columns[m][t])["accuracy"] for t in shared]) for m in models]
        chance = np.mean([targets[t]["chance"] for t in shared]) if shared else float("nan")
        lines.append(f"| **mean** ({len(shared)} targets) | {100 * chance:.1f}% | " + " | ".join(f"**{100 * v:.1f}%**" for v in means) + " |")
    regression = [t for t, e in targets.items() if e["kind"] == "regression"]
    if regression:
        lines += ["", "| target (MAE; Spearman, Kendall's tau, R^2) | chance MAE | " + " | ".join(models) + " |",
                  "|---" * (len(models) + 2) + "|"]

        def cell(result: dict) -> str:
            return (f"{result['mae']:.4g} ({result['spearman']:.2f}, {result.get('kendall_tau', float('nan')):.2f}, "
                    f"{result.get('r2', float('nan')):.2f})")

        for name in regression:
            cells = [cell(best(columns[m][name])) if name in columns[m] else "-" for m in models]
            lines.append(f"| {name} | {targets[name]['chance']:.4g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _subplots(figsize):
    """A figure and its axes, made without pyplot: saving a report never touches the
    caller's matplotlib backend (a notebook keeps its inline plots)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots()


def plot_confusion(path: Path, confusion: list, classes: list, title: str) -> None:
    matrix = np.asarray(confusion, np.float64)
    rows = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    size = 2.5 + 0.6 * len(classes)
    fig, ax = _subplots((size, size))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center",
                    color="white" if rows[i, j] > 0.5 else "black", fontsize=8)
    labels = [str(c) for c in classes]
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _ylabel(kind: str) -> str:
    return "test accuracy" if kind == "classification" else "test MAE"


def _finish(fig, ax, path: Path, kind: str, title: str, **legend) -> None:
    """Labels, title and legend of a metric-versus-x plot, written to ``path`` (PNG)."""
    ax.set_ylabel(_ylabel(kind))
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, **legend)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_learning_curve(path: Path, history: list[dict], kind: str, chance: float, title: str) -> None:
    """A training run's learning-curve points (:func:`nwsjax.meta.train.fit`) versus step:
    the train steps' metric (dropout on), training and validation metrics without
    dropout, chance, and the loss on a second axis."""
    fig, ax = _subplots((6.0, 3.8))
    steps = [r["step"] for r in history]
    metric = "accuracy" if kind == "classification" else "error"
    if kind == "classification":
        ax.plot(steps, [r["train"] for r in history], ":", color="C0", label="train steps (dropout on)")
    for key, style, label in (("train_eval", "-", f"train {metric} (no dropout)"), ("val", "-", f"validation {metric}")):
        if any(key in r for r in history):
            ax.plot([r["step"] for r in history if key in r], [r[key] for r in history if key in r], style, label=label)
    ax.axhline(chance, color="gray", lw=1, ls=":", label="chance")
    loss = ax.twinx()
    loss.plot(steps, [r["loss"] for r in history], "--", color="k", alpha=0.35, lw=1)
    loss.set_ylabel("training loss (dashed)")
    ax.set_xlabel("train step")
    ax.set_ylabel("accuracy" if kind == "classification" else "MAE (train steps: standardized loss)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_slice_length(path: Path, rows: list[dict], kind: str, chance: float, title: str) -> None:
    """Rows ``{"model", "length", "single", "ensemble"}`` -> metric versus slice length (log x)."""
    fig, ax = _subplots((5.5, 3.8))
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        lengths = [r["length"] for r in mine]
        ax.plot(lengths, [r["single"] for r in mine], "o--", label=f"{model}, 1 slice")
        ax.plot(lengths, [r["ensemble"] for r in mine], "o-", label=f"{model}, ensemble")
    ax.axhline(chance, color="gray", lw=1, ls=":", label="chance")
    ax.set_xscale("log")
    ax.set_xlabel("slice length (weights)")
    _finish(fig, ax, path, kind, title)


def plot_where(path: Path, where: dict, kind: str, chance: float, title: str) -> None:
    """Metric (and true-class probability) versus slice position, layer boundaries marked."""
    fig, ax = _subplots((7.5, 3.8))
    x = np.asarray(where["position"])
    ax.plot(x, where["metric"], "-", label=_ylabel(kind))
    if "prob_true" in where:
        ax.plot(x, where["prob_true"], "-", alpha=0.7, label="probability of the true class")
    ax.axhline(chance, color="gray", lw=1, ls=":", label="chance")
    for boundary in where["boundaries"]:
        if 0 <= boundary["position"] <= 1:
            ax.axvline(boundary["position"], color="k", lw=0.6, alpha=0.4)
            ax.text(boundary["position"], 1.0, boundary["layer"], rotation=90, fontsize=6, va="top",
                    transform=ax.get_xaxis_transform())
    ax.set_xlabel(f"slice start, relative to its range (layers of {where['architecture']})")
    ax.set_xlim(0, 1)
    _finish(fig, ax, path, kind, title, loc="lower right")


def plot_when(path: Path, rows: list[dict], kind: str, chance: float, title: str) -> None:
    """Rows ``{"model", "snapshot", "value"}`` -> metric versus snapshot index."""
    fig, ax = _subplots((5.5, 3.8))
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        ax.plot([r["snapshot"] for r in mine], [r["value"] for r in mine], "o-", label=model)
    ax.axhline(chance, color="gray", lw=1, ls=":", label="chance")
    ax.set_xlabel("snapshot (1 = initialization)")
    _finish(fig, ax, path, kind, title)


def _json_default(value):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def json_ready(obj):
    """``obj`` as it reads back from :func:`write_json` (tuples as lists, numpy as Python)."""
    return json.loads(json.dumps(obj, default=_json_default))


def write_json(path: Path, obj) -> None:
    """Writes ``obj`` as JSON; atomically, so a killed run leaves the previous file whole."""
    partial = path.with_name(path.name + ".tmp")
    partial.write_text(json.dumps(obj, indent=1, default=_json_default))
    os.replace(partial, path)
