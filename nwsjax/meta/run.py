"""A meta run: every chosen target and model on one zoo, the analyses, and the report folder.

:func:`run_meta` is what ``experiments/meta.py`` calls. It checks every option against
the zoo before training anything, then per target: class-balanced samples of a split by
network, each model trained and tested, the analyses, a printed table; finally a summary
table and the report folder (``results.json``, PNG plots).
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from nwsjax.errors import ConfigError, ZooError
from nwsjax.formats import open_any
from nwsjax.meta import analyses, report
from nwsjax.meta.data import (
    PARTS,
    Samples,
    Split,
    Target,
    accuracy_table,
    check_length,
    format_snapshots,
    make_samples,
    network_layouts,
    parse_snapshots,
    part_lengths,
    resolve_targets,
    rng_for,
    split_given,
    split_networks,
    table,
)
from nwsjax.meta.reader import DEFAULT_CACHE_BYTES, WeightReader
from nwsjax.meta.train import (
    MODELS,
    SLICE_MODELS,
    TREE_MODELS,
    Fitted,
    ModelOptions,
    TrainSettings,
    build_model,
    eval_stream,
    evenly,
    fit,
    fit_stats,
    headline,
    make_stream,
    metrics,
    normalizes_by_batch,
    predict,
    random_starts,
    slice_metrics,
    slice_spec,
    stats_features,
    stats_outputs,
)
from nwsjax.meta.models import DMC
from nwsjax.zoo import Zoo, software_versions

__all__ = ["ANALYSES", "DEFAULT_MODELS", "MetaConfig", "run_meta", "parse_models", "parse_analyses"]

ANALYSES = ("where", "when", "slice-length", "confusion")
DEFAULT_MODELS = ("dmc", "set", "units", "stats")


@dataclasses.dataclass(frozen=True)
class MetaConfig:
    """Everything a meta run does; saved with its results.

    Attributes:
      zoo: the zoo: a folder of ours, NWS CSV files (comma-separated, e.g.
        ``nws_main_train.csv,nws_main_test.csv``) or Small CNN Zoo folders
        (:func:`nwsjax.formats.open_any`).
      target: comma-separated targets (property names, ``test_acc``) or ``"all"``.
      model: comma-separated models (:data:`nwsjax.meta.train.MODELS`) or ``"all"``.
      snapshots: snapshot range (``"11-20"``); None: the second half of the zoo's.
      slice_length: weights per slice of the slice models.
      part: ``"whole"``, ``"conv"`` or ``"fc"``.
      analysis: comma-separated analyses (:data:`ANALYSES`), ``"all"`` or ``""``.
      slice_lengths: lengths of the slice-length analysis; None: 500..40000 up to the shortest vector.
      ensemble: evenly spaced slices per test network of the test-time ensemble.
      positions: evenly spaced slice positions of the where analysis.
      seed: the run seed; every other seed derives from it.
      test_fraction, val_fraction: fractions of networks in test, and of the rest in validation.
      own_split: when the zoo carries its own train/test split (NWS: the CSV a network
        is listed in), keep it (``test_fraction`` unused; validation drawn from the train
        side); False: a random split by network as for any zoo.
      min_test_acc: leave out networks whose final test accuracy is lower (non-converged).
      train: training settings of the Flax models.
      options: model sizes.
      cache_bytes: budget of the reader's vector cache.
      out: the report folder; None: ``runs/meta/<zoo folder name>`` (NWS lists: their folder's name).
      overwrite: write over a meta report already in ``out`` (any other non-empty folder is refused).
      resume: continue the interrupted report in ``out``: the targets it finished, and the
        models it finished of the target it was on, are kept; the rest run. Every setting
        that changes results must be the interrupted run's (:func:`resumed_results`).
    """

    zoo: str
    target: str = "all"
    model: str = ",".join(DEFAULT_MODELS)
    snapshots: str | None = None
    slice_length: int = 5000
    part: str = "whole"
    analysis: str = ""
    slice_lengths: tuple[int, ...] | None = None
    ensemble: int = 64
    positions: int = 100
    seed: int = 0
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    own_split: bool = True
    min_test_acc: float = 0.0
    train: TrainSettings = TrainSettings()
    options: ModelOptions = ModelOptions()
    cache_bytes: int = DEFAULT_CACHE_BYTES
    out: str | None = None
    overwrite: bool = False
    resume: bool = False


def parse_models(spec: str) -> list[str]:
    names = [s for s in _names(spec) if s]
    if "all" in names:
        return list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown or not names:
        raise ConfigError(f"unknown model {unknown[0] if unknown else spec!r}; choose one or more of {', '.join(MODELS)}, or all")
    return list(dict.fromkeys(names))


def parse_analyses(spec: str) -> list[str]:
    names = [s for s in _names(spec) if s and s != "none"]
    if "all" in names:
        return list(ANALYSES)
    unknown = [n for n in names if n not in ANALYSES]
    if unknown:
        raise ConfigError(f"unknown analysis {unknown[0]!r}; choose one or more of {', '.join(ANALYSES)}, all or none")
    return list(dict.fromkeys(names))


@dataclasses.dataclass
class Run:
    """What a run shares between targets, models and analyses (:mod:`nwsjax.meta.analyses`)."""

    config: MetaConfig
    zoo: Zoo
    reader: WeightReader
    split: Split
    split_source: str
    snapshots: tuple[int, ...]
    models: list[str]
    analyses: list[str]
    out: Path
    log: Callable[[str], None]
    targets: list[Target]
    skipped: dict[str, str]
    samples: dict[str, dict[str, Samples]]
    stats_cache: dict = dataclasses.field(default_factory=dict)

    def seed(self, *names) -> int:
        return int(rng_for(self.config.seed, "model", *names).integers(2**31 - 3))

    def train_and_test(self, target: Target, model: str, samples: dict[str, Samples], length: int,
                       snapshots, *, validate: bool = True) -> tuple[dict, Fitted | None]:
        """Trains ``model`` on the train samples and tests it: ``(result, fitted model or None)``.

        Slice models are tested on one seeded random slice per sample (``single``) and on
        ``config.ensemble`` evenly spaced slices: ``ensemble`` averages the probabilities
        (a soft vote); for the DMC, ``per_slice`` is the reference's number, the fraction
        of the slices classified correctly per network. ``train`` is the accuracy (or
        error) on training samples without dropout at the last learning-curve point.
        """
        config, tag = self.config, (target.name, model, length, format_snapshots(snapshots))
        start = time.perf_counter()
        if model in TREE_MODELS:
            return self._train_and_test_trees(target, model, samples, tag, start), None
        spec = slice_spec(model, length, config.part, config.options)
        stream = make_stream(model, self.zoo, self.reader, samples["train"], spec, batch_size=config.train.batch_size,
                             buffer_bytes=config.train.buffer_bytes)
        module = build_model(model, target.num_outputs, config.options)
        # one slice per sample: a model normalized by the test batch sees batches of the training batch size
        single_batch = config.train.batch_size if normalizes_by_batch(module) else None

        def scorer(side: Samples, name: str):
            stream = eval_stream(self.zoo, self.reader, side, spec, config.train, count=1, model=model,
                                 batch_size=single_batch)
            starts = random_starts(stream, config.seed, name, *tag)
            return lambda f: headline(target, metrics(target, predict(f, stream, starts), side))

        validation = scorer(samples["val"], "val") if validate and len(samples["val"]) else None
        training = None
        if validate and config.train.train_eval:
            rows = rng_for(config.seed, "train-eval", *tag).permutation(len(samples["train"]))[: config.train.train_eval]
            training = scorer(samples["train"].take(np.sort(rows)), "train-eval")
        fitted = fit(module, target, stream, config.train, self.seed(*tag), validate=validation,
                     train_metric=training, label=f"{target.name} {model}")
        test = eval_stream(self.zoo, self.reader, samples["test"], spec, config.train, count=1, model=model,
                           batch_size=single_batch)
        bar = f"{target.name} {model} test" if config.train.progress else None
        starts = random_starts(test, config.seed, "test", *tag)
        result = {"single": metrics(target, predict(fitted, test, starts, progress=bar), samples["test"])}
        if model in SLICE_MODELS:
            ensemble = eval_stream(self.zoo, self.reader, samples["test"], spec, config.train, count=config.ensemble)
            each = isinstance(module, DMC)
            outputs = predict(fitted, ensemble, evenly(ensemble), per_slice=each, progress=bar)
            result["ensemble"] = metrics(target, outputs.mean(axis=1) if each else outputs, samples["test"])
            if each:
                result["per_slice"] = slice_metrics(target, outputs, samples["test"])
        kept = {r["step"]: r for r in fitted.history}.get(fitted.best_step) or (fitted.history or [{}])[-1]
        result.update({key: kept[key] for key in ("val", "train_eval") if key in kept})
        if fitted.best_step is not None:
            result["best_step"] = fitted.best_step
        result.update(history=fitted.history, steps=fitted.steps, seconds=time.perf_counter() - start)
        if model != "units":
            result.update(slice_length=stream.length, slices_per_sample=spec.count)
        return result, fitted

    def _train_and_test_trees(self, target: Target, model: str, samples: dict[str, Samples], tag: tuple,
                              start: float) -> dict:
        """:meth:`train_and_test` of the tree models (``stats``, ``unitstats``)."""
        part = self.config.part
        features = {side: stats_features(self.zoo, self.reader, s, part, self.stats_cache, model)
                    for side, s in samples.items() if len(s)}
        names = features["train"][1]
        aligned = {side: _align(f, n, names) for side, (f, n) in features.items()}
        trees = fit_stats(target, aligned["train"], samples["train"].y, self.seed(*tag), self.config.options.stats_iterations)
        result = {"single": metrics(target, stats_outputs(trees, target, aligned["test"]), samples["test"])}
        if "val" in aligned:
            result["val"] = headline(target, metrics(target, stats_outputs(trees, target, aligned["val"]), samples["val"]))
        result["features"] = len(names)
        result["seconds"] = time.perf_counter() - start
        return result


def _check(config: MetaConfig, log) -> Run:
    """Opens the zoo and checks every option against it, before any training."""
    zoo = open_any(config.zoo)
    targets, skipped = resolve_targets(config.target, zoo)
    models = parse_models(config.model)
    analyses = parse_analyses(config.analysis)
    snapshots = parse_snapshots(config.snapshots, zoo.num_snapshots)
    if config.part not in PARTS:
        raise ConfigError(f"--part {config.part}: choose one of {', '.join(PARTS)}")
    for name, value in (("--ensemble", config.ensemble), ("--positions", config.positions)):
        if value < 1:
            raise ConfigError(f"{name} {value}: need at least 1")
    ids = zoo.members.index.to_numpy()
    if config.min_test_acc > 0:
        ids = ids[_final_accuracy(zoo).reindex(ids).to_numpy() >= config.min_test_acc]
        if not len(ids):
            raise ConfigError(f"--min-test-acc {config.min_test_acc}: no network is that accurate; lower it")
    split, split_source = _split(zoo, ids, config)
    every = "all" in _names(config.target)
    samples = {}
    for target in list(targets):
        try:
            samples[target.name] = make_samples(zoo, target, split, snapshots, config.seed)
        except ConfigError as err:
            if not every:
                raise
            targets.remove(target)
            skipped[target.name] = str(err).split("; ")[0]
    if {"units", *TREE_MODELS} & set(models) or "where" in analyses:
        _check_layouts(zoo, ids)
    if any(m in SLICE_MODELS for m in models):
        spec = slice_spec("dmc", config.slice_length, config.part, config.options)
        check_length(zoo, ids, spec)
        if "set" in models and config.slice_length < config.options.set_patch:
            raise ConfigError(f"--slice-length {config.slice_length} is shorter than a patch of the set model "
                              f"({config.options.set_patch} weights); use a longer slice")
    if "global" in models:
        _, _, n_part = part_lengths(zoo, ids, config.part)
        if len(set(n_part.tolist())) > 1:
            if "all" not in _names(config.model):
                check_length(zoo, ids, slice_spec("global", 0, config.part, config.options))
            models.remove("global")
            log("skipping model global: the networks have several lengths")
    named = Path(config.zoo) if Path(config.zoo).is_dir() else Path(zoo.path)  # NWS lists: their folder
    out = Path(config.out) if config.out else Path("runs") / "meta" / named.resolve().name
    _check_out(out, config.overwrite, config.resume)
    reader = WeightReader(zoo, cache_bytes=config.cache_bytes)
    return Run(config, zoo, reader, split, split_source, snapshots, models, analyses, out, log, targets, skipped, samples)


_REPORT_FILES = ("results.json", "summary.txt")


def _check_out(out: Path, overwrite: bool, resume: bool = False) -> None:
    """Refuses a report folder that would overwrite another run's report or other files."""
    if resume:
        if overwrite:
            raise ConfigError("--resume and --overwrite contradict each other; pass one of them")
        if not (out / "results.json").is_file():
            raise ConfigError(f"--resume: {out} holds no meta report to continue; run without --resume")
        return
    existing = next((p for p in [out, *out.absolute().parents] if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"--out {out}: {existing} is a file, not a folder; choose another --out")
    if not out.is_dir():
        return
    files = list(out.iterdir())
    if not files:
        return
    if any(p.is_dir() or not (p.name in _REPORT_FILES or p.suffix in (".png", ".tmp")) for p in files):
        raise ConfigError(f"--out {out}: folder is not empty and holds no meta report; choose another --out")
    if not overwrite:
        raise ConfigError(f"--out {out}: holds a meta report already; pass --overwrite to write over it, "
                          "or choose another --out")


def _check_layouts(zoo: Zoo, ids: np.ndarray) -> None:
    """Every network's layers are known (a format zoo's networks may fit no architecture we know)."""
    try:
        network_layouts(zoo, ids)
    except ZooError as err:
        raise ConfigError(f"{str(err).split('; ')[0]}; the units and stats models and the where analysis need "
                          "each network's layers, use --model dmc,set without --analysis where") from None


def _final_accuracy(zoo: Zoo) -> pd.Series:
    """Each network's final test accuracy: the members table's ``test_acc``, else (NWS)
    its accuracy at snapshot K."""
    if "test_acc" in zoo.members.columns:
        return zoo.members["test_acc"]
    return accuracy_table(zoo).xs(zoo.num_snapshots, level="snapshot")


def _split(zoo: Zoo, ids: np.ndarray, config: MetaConfig) -> tuple[Split, str]:
    """The zoo's own train/test split when it has one and ``config.own_split`` (NWS: its
    ``split`` column, the CSV each network came from), else a random split by network.

    Returns the split and where it came from: ``"zoo"`` or ``"random"``.
    """
    own = zoo.members["split"].reindex(ids) if "split" in zoo.members.columns else None
    if config.own_split and own is not None and set(own) == {"train", "test"}:
        return split_given(ids, ids[(own == "test").to_numpy()], config.seed, config.val_fraction), "zoo"
    return split_networks(ids, config.seed, config.test_fraction, config.val_fraction), "random"


def _names(spec: str) -> list[str]:
    return [s.strip() for s in spec.split(",")]


def run_meta(config: MetaConfig, *, log: Callable[[str], None] = print) -> dict:
    """Runs every target and model of ``config``, prints tables, writes the report folder.

    Returns:
      the contents of ``results.json``.
    """
    started = time.perf_counter()
    run = _check(config, log)
    run.out.mkdir(parents=True, exist_ok=True)
    results = {
        "config": dataclasses.asdict(config),
        "seeds": {
            "seed": config.seed,
            "derivation": "numpy SeedSequence([seed, crc32(purpose), ...]) per purpose "
            "(split, balance, epochs, eval, model init); JAX keys from the model seed",
        },
        "versions": {**software_versions(), **_more_versions()},
        "zoo": {
            "path": str(run.zoo.path),
            "format": run.zoo.info.get("format"),
            "networks": len(run.zoo.members),
            "snapshots": run.zoo.num_snapshots,
            "architectures": sorted(set(run.zoo.members["architecture"].dropna())) if "architecture" in run.zoo.members else [],
        },
        "snapshots": list(run.snapshots),
        "models": run.models,
        "split": {side: [int(i) for i in ids] for side, ids in run.split.sides().items()},
        "split_source": run.split_source,
        "skipped_targets": run.skipped,
        "targets": {},
    }
    previous = resumed_results(run.out / "results.json", results) if config.resume else {}
    for name, reason in run.skipped.items():
        log(f"skipping target {name}: {reason}")
    log(f"zoo {run.zoo.path}: {len(run.zoo.members)} networks; snapshots {format_snapshots(run.snapshots)}; "
        f"models {', '.join(run.models)}; report in {run.out}")
    if run.split_source == "zoo":
        log(f"split: the zoo's own (train/test lists): {len(run.split.train)} train, {len(run.split.val)} "
            f"validation (from the train side), {len(run.split.test)} test networks")
    for target in run.targets:
        before = previous.get(target.name)

        def save(entry: dict, name: str = target.name) -> None:
            results["targets"][name] = entry
            report.write_json(run.out / "results.json", results)

        if before is not None and not before.get("partial"):
            log(f"{target.name}: kept from the interrupted run")
            entry = before
        else:
            entry = _run_target(run, target, before, save)
        save(entry)
        log(report.format_target(target.name, entry, config.ensemble))
    results["summary"] = _summary(results, config.ensemble)
    summary = report.format_summary(results["summary"])
    if summary:
        log(summary)
        (run.out / "summary.txt").write_text(summary + "\n")
    results["seconds"] = time.perf_counter() - started
    results["reader"] = dict(run.reader.counters, cached_bytes=run.reader.cached_bytes)
    report.write_json(run.out / "results.json", results)
    return results


def _more_versions() -> dict:
    import sklearn

    return {"scikit-learn": sklearn.__version__, "python": platform.python_version()}


# --------------------------------------------------------------------------- #
# One target
# --------------------------------------------------------------------------- #


def _chance(target: Target, samples: dict[str, Samples]) -> float:
    if target.kind == "classification":
        return 1.0 / target.num_outputs
    test = samples["test"]
    return metrics(target, np.full(len(test), np.median(samples["train"].y), np.float32), test)["mae"]


# Settings that do not change a meta run's results: a resumed run may give them anew.
_RESUME_FREE = ("out", "overwrite", "resume", "cache_bytes", "train.progress")


def resumed_results(path: Path, results: dict) -> dict:
    """The targets of the interrupted report ``path`` that a resumed run keeps.

    ``results``: the new run's results so far (its config and split). Raises ConfigError
    when a setting that changes results, or the split of networks, differs.
    """
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"--resume: {path} cannot be read ({err}); run again with --overwrite") from None
    old, new = _flat_settings(before.get("config", {})), _flat_settings(report.json_ready(results["config"]))
    for key in sorted(set(old) | set(new)):
        if key not in _RESUME_FREE and old.get(key) != new.get(key):
            raise ConfigError(f"--resume {path.parent}: setting {key} is {new.get(key)!r}, the interrupted run's "
                              f"{old.get(key)!r}; give the same settings, or start over with --overwrite")
    if before.get("split") != results["split"]:
        raise ConfigError(f"--resume {path.parent}: the zoo's networks differ from the interrupted run's; "
                          "start over with --overwrite")
    return before.get("targets", {})


def _flat_settings(config: dict, prefix: str = "") -> dict:
    """``{"train": {"epochs": 2}}`` -> ``{"train.epochs": 2}``."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat_settings(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _run_target(run: Run, target: Target, before: dict | None = None,
                save: Callable[[dict], None] | None = None) -> dict:
    """Trains and tests every model on ``target`` and runs the analyses; returns its results entry.

    ``before``: the entry an interrupted run left (``"partial"``): its models are kept,
    except slice models the where analysis needs fitted again. ``save`` is called with
    the partial entry after every model.
    """
    samples = run.samples[target.name]
    entry = {
        "kind": target.kind,
        "classes": [str(c) for c in target.classes],
        "chance": _chance(target, samples),
        "samples": table(samples).astype(int).to_dict(orient="index"),
        "models": {},
        "analyses": {},
    }
    fitted = {}
    kept = (before or {}).get("models", {})
    for model in run.models:
        if model in kept and not (model in SLICE_MODELS and "where" in run.analyses):
            run.log(f"{target.name}, {model}: kept from the interrupted run")
            entry["models"][model] = kept[model]
            continue
        result, fitted[model] = run.train_and_test(target, model, samples, run.config.slice_length, run.snapshots)
        entry["models"][model] = result
        if save is not None:
            save(dict(entry, partial=True))
        if result.get("history"):
            report.plot_learning_curve(run.out / f"curve-{target.name}-{model}.png", result["history"], target.kind,
                                       entry["chance"], f"{target.name}, {model}: learning curve")
        if target.kind == "classification":
            best = result.get("ensemble") or result["single"]
            report.plot_confusion(run.out / f"confusion-{target.name}-{model}.png", best["confusion"],
                                  entry["classes"], f"{target.name}, {model} ({_pct(best['accuracy'])} test accuracy)")
    if "slice-length" in run.analyses:
        entry["analyses"]["slice_length"] = analyses.slice_length(run, target, samples, entry["chance"])
    if "where" in run.analyses:
        entry["analyses"]["where"] = {
            m: analyses.where(run, target, samples, fitted[m], m, entry["chance"]) for m in run.models if m in SLICE_MODELS
        }
    if "when" in run.analyses:
        entry["analyses"]["when"] = analyses.when(run, target, entry["chance"])
    return entry


def _pct(value: float) -> str:
    return f"{100 * value:.1f}%"


def _align(features: np.ndarray, names: list[str], order: list[str]) -> np.ndarray:
    """Columns of ``features`` reordered to ``order`` (missing ones NaN)."""
    index = {n: i for i, n in enumerate(names)}
    out = np.full((len(features), len(order)), np.nan)
    for j, name in enumerate(order):
        if name in index:
            out[:, j] = features[:, index[name]]
    return out


def _summary(results: dict, ensemble: int) -> dict:
    """Test accuracy per categorical target and model (ensemble where there is one), and the means."""
    models = results["models"]
    rows = {}
    for name, entry in results["targets"].items():
        if entry["kind"] != "classification":
            continue
        row = {"chance": entry["chance"]}
        for model, r in entry["models"].items():
            row[model] = (r.get("ensemble") or r["single"])["accuracy"]
        rows[name] = row
    mean = {key: float(np.mean([r[key] for r in rows.values() if key in r])) for key in ["chance", *models]} if rows else {}
    return {"ensemble": ensemble, "models": models, "targets": rows, "mean": mean}
