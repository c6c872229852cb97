"""Training and evaluation of meta-models: Flax models with optax, and the trees baseline.

Flax models train as the reference trains its DMC: Adam, the rate multiplied by 0.95
fifty times over training (staircase), batch 64, cross-entropy for classes and mean
absolute error for regression (on the standardized value). Every epoch draws fresh
slice positions (:meth:`nwsjax.meta.data.SliceStream.train_epoch`). The budget is
``epochs`` passes or a number of ``steps``; every ``eval_every`` steps a learning-curve
point records the loss, training accuracy without dropout and the validation metric,
and with ``patience`` training stops when validation stops improving.

The DMC normalizes by batch statistics at test time by default, as the reference
(:attr:`nwsjax.meta.models.DMC.test_norm`): :func:`predict` then normalizes the slices of
one sample together (the 64 slices of one network), and single slices in batches of
``batch_size`` samples (the reference's test batches).

Evaluation gives, per sample, class probabilities (or a value) from

* one slice at a seeded random position (``"single"``, the reference's test number;
  for the whole-vector models, global and units, their one input),
* ``count`` evenly spaced slices, probabilities averaged (``"ensemble"``; for set
  models the whole set is one input),

and metrics per test *network* (mean over its snapshots), then the mean over
networks with a 95% confidence interval.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from nwsjax.errors import ConfigError
from nwsjax.meta.data import (
    Samples,
    SliceSpec,
    SliceStream,
    Target,
    UnitStream,
    draw_starts,
    even_starts,
    network_layouts,
    prefetch,
    rng_for,
)
from nwsjax.meta.models import (
    DMC,
    TEST_NORMS,
    SliceSet,
    UnitSet,
    statistic_names,
    unit_spread,
    unit_spread_names,
    weight_statistics,
)
from nwsjax.meta.reader import WeightReader
from nwsjax.zoo import Zoo

__all__ = [
    "MODELS",
    "SLICE_MODELS",
    "TREE_MODELS",
    "TrainSettings",
    "ModelOptions",
    "Fitted",
    "build_model",
    "slice_spec",
    "make_stream",
    "fit",
    "schedule",
    "learning_rates",
    "predict",
    "fit_stats",
    "stats_features",
    "metrics",
    "normalizes_by_batch",
    "slice_metrics",
    "throughput",
]

MODELS = ("dmc", "set", "units", "global", "stats", "unitstats")
TREE_MODELS = ("stats", "unitstats")  # gradient-boosted trees on features of the whole vector
SLICE_MODELS = ("dmc", "set")  # models of slices: the ensemble, where and slice-length apply


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """How Flax meta-models train (defaults: the reference's DMC training).

    Attributes:
      epochs: passes over the training samples (the budget unless ``steps`` is given).
      steps: the budget in train steps; None: ``epochs`` x steps per epoch. The rate
        schedule spans the budget.
      eval_every: steps between learning-curve points (validation, training accuracy
        without dropout); None: one epoch. The last step always ends with one.
      patience: stop after this many learning-curve points without a better validation
        metric and keep the best point's variables; None: train the whole budget.
      train_eval: training samples (a fixed seeded subset) evaluated without dropout at
        every learning-curve point; 0: none.
      batch_size: samples per step.
      lrate: Adam's initial learning rate.
      decay, decays: the rate is multiplied by ``decay`` ``decays`` times over training.
      eval_slices: slices per forward pass at evaluation (bounds evaluation memory).
      buffer_bytes: shuffle buffer of cut slices (see docs/meta.md).
      progress: show progress bars.
    """

    epochs: int = 50
    steps: int | None = None
    eval_every: int | None = None
    patience: int | None = None
    train_eval: int = 512
    batch_size: int = 64
    lrate: float = 1e-3
    decay: float = 0.95
    decays: int = 50
    eval_slices: int = 256
    buffer_bytes: int = 256 << 20
    progress: bool = True

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1 or self.eval_slices < 1:
            raise ConfigError(f"epochs={self.epochs}, batch_size={self.batch_size}, eval_slices={self.eval_slices}: each must be at least 1")
        if not self.lrate > 0:
            raise ConfigError(f"lrate={self.lrate}: must be positive")
        if self.decays < 1 or not 0 < self.decay <= 1:
            raise ConfigError(f"decay={self.decay}, decays={self.decays}: need 0 < decay <= 1 and decays >= 1")
        for name in ("steps", "eval_every", "patience"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name}={value}: must be at least 1 (or None)")
        if self.train_eval < 0:
            raise ConfigError(f"train_eval={self.train_eval}: must be at least 0")


@dataclasses.dataclass(frozen=True)
class ModelOptions:
    """Sizes of the meta-models.

    Attributes:
      dmc_width: channel and dense width multiplier of the DMC and global models (1 = reference).
      dmc_dropout: dropout rate of their dense layers (0.5 = reference).
      dmc_test_norm: what their batch norm normalizes by at test time: ``"batch"``, the
        test batch's own statistics (the reference), or ``"running"`` averages.
      set_slices: slices per network in a training sample of the set model.
      set_patch, set_width, set_depth: the set model's patch size, width and conv depth.
      set_bins: bins of the set model's per-slice histograms (0: none).
      set_position: feed slice positions to the set model.
      units_width: token and layer embedding width of the units model.
      units_keep: fraction of units the units model keeps per training pass (1: all).
      stats_iterations: boosting iterations of the stats baseline.
    """

    dmc_width: float = 1.0
    dmc_dropout: float = 0.5
    dmc_test_norm: str = "batch"
    set_slices: int = 8
    set_patch: int = 16
    set_width: int = 64
    set_depth: int = 2
    set_bins: int = 16
    set_position: bool = True
    units_width: int = 128
    units_keep: float = 0.5
    stats_iterations: int = 200


def slice_spec(model: str, length: int, part: str, options: ModelOptions) -> SliceSpec:
    """The slices a model reads: one slice (dmc), a set (set), the whole vector or part (global, units)."""
    if model in ("global", "units"):
        return SliceSpec(None, part, 1)
    return SliceSpec(length, part, options.set_slices if model == "set" else 1)


def make_stream(model: str, zoo: Zoo, reader: WeightReader, samples: Samples, spec: SliceSpec, *,
                batch_size: int, buffer_bytes: int) -> SliceStream:
    """The stream of a model's inputs: slices, or unit tokens for ``units``."""
    if model == "units":
        return UnitStream(zoo, reader, samples, spec.part, batch_size=batch_size, buffer_bytes=buffer_bytes)
    return SliceStream(zoo, reader, samples, spec, batch_size=batch_size, buffer_bytes=buffer_bytes)


def build_model(model: str, outputs: int, options: ModelOptions) -> nn.Module:
    if model in ("dmc", "global"):
        if options.dmc_test_norm not in TEST_NORMS:
            raise ConfigError(f"--dmc-test-norm {options.dmc_test_norm}: choose one of {', '.join(TEST_NORMS)}")
        return DMC(outputs, width=options.dmc_width, dropout=options.dmc_dropout, test_norm=options.dmc_test_norm)
    if model == "units":
        return UnitSet(outputs, width=options.units_width, keep=options.units_keep)
    if model == "set":
        return SliceSet(outputs, patch=options.set_patch, width=options.set_width, depth=options.set_depth,
                        bins=options.set_bins, use_position=options.set_position)
    raise ConfigError(f"unknown model {model!r}; choose one or more of {', '.join(MODELS)}")


# --------------------------------------------------------------------------- #
# Flax models
# --------------------------------------------------------------------------- #


@dataclasses.dataclass
class Fitted:
    """A trained Flax meta-model.

    Attributes:
      module, variables: the model and its ``{"params", "batch_stats"}``.
      target: what it predicts; scale: ``(mean, std)`` of a regression target.
      history: one dict per learning-curve point (:func:`fit`).
      steps, seconds: training steps and wall time (compilation included).
      best_step: with early stopping, the step whose variables were kept.
    """

    module: nn.Module
    variables: dict
    target: Target
    scale: tuple[float, float]
    history: list
    steps: int
    seconds: float
    best_step: int | None = None


def _loss(kind: str):
    if kind == "classification":
        return lambda out, y: optax.softmax_cross_entropy_with_integer_labels(out, y).mean()
    return lambda out, y: jnp.abs(out[:, 0] - y).mean()


@functools.lru_cache(maxsize=64)
def make_step(module: nn.Module, kind: str):
    """The optimizer (optax's Adam, its rate in its state) and the jitted train step of a model.

    ``step(variables, opt_state, x, position, y, key, lrate) -> (variables, opt_state, loss, metric)``:
    the step's learning rate ``lrate`` (float32 scalar, from :func:`schedule`) goes into
    the optimizer's state (``optax.inject_hyperparams``), so one compiled step serves
    every schedule and run length (cached: equal models compile once per input shape).
    """
    # Only the rate is injected: b1, b2 and eps stay Python constants, as in optax.adam
    # (injected, 1 - b1 would be computed in float32 and the updates would change).
    optimizer = optax.inject_hyperparams(optax.adam, static_args=("b1", "b2", "eps", "eps_root"),
                                         hyperparam_dtype=jnp.float32)(learning_rate=0.0)
    loss_fn = _loss(kind)

    def step(variables, opt_state, x, position, y, key, lrate):
        def objective(params):
            out, updates = module.apply(
                {"params": params, "batch_stats": variables["batch_stats"]}, x, position,
                train=True, rngs={"dropout": key}, mutable=["batch_stats"],
            )
            return loss_fn(out, y), (out, updates["batch_stats"])

        (loss, (out, stats)), grads = jax.value_and_grad(objective, has_aux=True)(variables["params"])
        opt_state = opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": lrate})
        updates, opt_state = optimizer.update(grads, opt_state, variables["params"])
        params = optax.apply_updates(variables["params"], updates)
        metric = (out.argmax(-1) == y).mean() if kind == "classification" else loss
        return {"params": params, "batch_stats": stats}, opt_state, loss, metric

    return optimizer, jax.jit(step, donate_argnums=(0, 1))


def schedule(settings: TrainSettings, total: int) -> optax.Schedule:
    """The reference's schedule over ``total`` steps: ``lrate * decay ** floor(step / period)``,
    ``period = max(1, total // decays)`` (staircase: the rate drops at steps ``period``,
    ``2 * period``, ...; step 0 trains at ``lrate``)."""
    return optax.exponential_decay(settings.lrate, max(1, total // settings.decays), settings.decay, staircase=True)


def learning_rates(settings: TrainSettings, total: int) -> np.ndarray:
    """float32 ``[total]``: the rate of every step of a run (:func:`schedule`, evaluated once).

    Evaluated in float64, then rounded: in float32, ``0.95 ** k`` drifts by up to 8 ulp
    at late steps (0.95 is not exact in float32).
    """
    with jax.enable_x64(True):
        rates = schedule(settings, total)(np.arange(total))
    return np.asarray(rates).astype(np.float32)


@functools.lru_cache(maxsize=64)
def _init_fn(module: nn.Module):
    return jax.jit(module.init)


def init_variables(module: nn.Module, stream: SliceStream, batch_size: int, seed: int) -> dict:
    """Fresh ``{"params", "batch_stats"}`` for batches of ``batch_size`` samples of ``stream``."""
    x, position = stream.example(batch_size)
    variables = _init_fn(module)({"params": jax.random.key(seed), "dropout": jax.random.key(seed + 1)}, x, position)
    return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}


def fit(module: nn.Module, target: Target, stream: SliceStream, settings: TrainSettings, seed: int, *,
        validate: Callable[[Fitted], float] | None = None, train_metric: Callable[[Fitted], float] | None = None,
        label: str = "") -> Fitted:
    """Trains ``module`` on the batches of ``stream`` for the budget of ``settings``.

    Every ``settings.eval_every`` steps (default one epoch) and after the last step, a
    learning-curve point goes into ``history``: ``step``, ``epoch`` (steps over steps
    per epoch), ``loss`` and ``train`` (the train steps' mean loss and accuracy since the
    last point, dropout on), ``train_eval`` (``train_metric``: training samples without
    dropout), ``val`` (``validate``) and ``seconds``.

    Args:
      validate: the model so far -> the validation metric (accuracy, or error for
        regression); with ``settings.patience``, training stops after that many points
        without a better value, and the best point's variables are kept.
      train_metric: the model so far -> the same metric on training samples.
      label: progress bar text.
    """
    samples = stream.samples
    steps_per_epoch = len(samples) // settings.batch_size
    if steps_per_epoch < 1:
        raise ConfigError(f"{len(samples)} training samples are fewer than a batch of {settings.batch_size}; use a smaller --batch-size")
    total = settings.steps or steps_per_epoch * settings.epochs
    every = settings.eval_every or steps_per_epoch
    rates = learning_rates(settings, total)
    optimizer, step = make_step(module, target.kind)
    scale = (0.0, 1.0)
    if target.kind == "regression":
        scale = (float(np.mean(samples.y)), float(np.std(samples.y)) or 1.0)
    variables = init_variables(module, stream, settings.batch_size, seed)
    opt_state = optimizer.init(variables["params"])
    key = jax.random.key(seed + 2)
    rng = rng_for(seed, "epochs")
    fitted = Fitted(module, variables, target, scale, [], 0, 0.0)
    patience = _Patience(target.kind, settings.patience)
    start = time.perf_counter()
    bar = tqdm(total=total, desc=label, disable=not settings.progress, leave=False, unit="step")

    def endless():
        while True:
            yield from stream.train_epoch(rng)

    losses, scores, since = [], [], time.perf_counter()
    with contextlib.closing(prefetch(endless())) as batches:
        for batch in batches:
            y = batch.y if target.kind == "classification" else ((batch.y - scale[0]) / scale[1]).astype(np.float32)
            variables, opt_state, loss, score = step(variables, opt_state, batch.x, batch.position, y,
                                                     jax.random.fold_in(key, fitted.steps), rates[fitted.steps])
            losses.append(loss)
            scores.append(score)
            fitted.steps += 1
            bar.update()
            if fitted.steps % every and fitted.steps < total:
                continue
            fitted.variables = variables
            row = _curve_point(fitted, losses, scores, steps_per_epoch, since, train_metric, validate)
            bar.set_postfix(loss=f"{row['loss']:.3f}", **({"val": f"{row['val']:.3f}"} if "val" in row else {}))
            losses, scores, since = [], [], time.perf_counter()
            if patience.run_out(row, variables) or fitted.steps >= total:
                break
    bar.close()
    fitted.variables = patience.best_variables if patience.best is not None else jax.device_get(variables)
    fitted.best_step = patience.best["step"] if patience.best is not None else None
    fitted.seconds = time.perf_counter() - start
    return fitted


def _curve_point(fitted: Fitted, losses: list, scores: list, steps_per_epoch: int, since: float,
                 train_metric: Callable[[Fitted], float] | None, validate: Callable[[Fitted], float] | None) -> dict:
    """Appends one learning-curve point (see :func:`fit`) to ``fitted.history``; returns it.

    ``losses`` and ``scores``: the train steps' values since the last point; ``since``:
    when that point was taken (``time.perf_counter``).
    """
    row = {"step": fitted.steps, "epoch": fitted.steps / steps_per_epoch,
           "loss": float(np.mean(jax.device_get(losses))), "train": float(np.mean(jax.device_get(scores)))}
    if train_metric is not None:
        row["train_eval"] = train_metric(fitted)
    if validate is not None:
        row["val"] = validate(fitted)
    row["seconds"] = time.perf_counter() - since
    fitted.history.append(row)
    return row


class _Patience:
    """Validation-based stopping: the best learning-curve point so far and its variables.

    ``patience``: points without a better ``val`` before training stops (None: never).
    Accuracy is better higher, a regression error lower.
    """

    def __init__(self, kind: str, patience: int | None):
        self.patience = patience
        self.better = (lambda a, b: a > b) if kind == "classification" else (lambda a, b: a < b)
        self.best: dict | None = None
        self.best_variables = None
        self.waited = 0

    def run_out(self, row: dict, variables: dict) -> bool:
        """Takes the point ``row`` of the model ``variables``; whether patience has run out."""
        if self.patience is None or "val" not in row:
            return False
        if self.best is None or self.better(row["val"], self.best["val"]):
            self.best, self.best_variables, self.waited = row, jax.device_get(variables), 0
        else:
            self.waited += 1
        return self.waited >= self.patience


def normalizes_by_batch(module: nn.Module) -> bool:
    """Whether ``module`` normalizes by the statistics of its input batch at test time (the DMC's default)."""
    return isinstance(module, DMC) and module.test_norm == "batch"


@functools.lru_cache(maxsize=64)
def _forward(module: nn.Module, kind: str, each_slice: bool) -> Callable:
    """The jitted evaluation function ``(variables, x, position, valid) -> [b, s or 1, (classes)]``
    of a model; ``valid``: bool ``[b]``, the samples that are not padding.

    A model that normalizes by batch statistics at test time (:func:`normalizes_by_batch`)
    sees, with ``each_slice`` and several slices per sample, the ``s`` slices of one
    sample as one batch (the reference's 64 slices of one network); otherwise the
    whole input batch as one batch, its padding left out of the statistics. Its
    updated running averages are dropped.
    """
    by_batch = normalizes_by_batch(module)

    def apply(variables, x, position, valid=None):
        if by_batch:
            return module.apply(variables, x, position, mask=valid, mutable=["batch_stats"])[0]
        return module.apply(variables, x, position)

    @jax.jit
    def forward(variables, x, position, valid):
        b, s, length = x.shape
        if each_slice and by_batch and s > 1:
            out = jax.vmap(lambda xs, ps: apply(variables, xs[:, None], ps[:, None]))(x, position)
        elif each_slice:
            valid = jnp.repeat(valid, s)
            out = apply(variables, x.reshape(b * s, 1, length), position.reshape(b * s, 1), valid).reshape(b, s, -1)
        else:
            out = apply(variables, x, position, valid)[:, None]
        return jax.nn.softmax(out, -1) if kind == "classification" else out[..., 0]

    return forward


def predict(fitted: Fitted, stream: SliceStream, starts: Callable[[np.ndarray], np.ndarray], *,
            each_slice: bool | None = None, per_slice: bool = False, progress: str | None = None) -> np.ndarray:
    """Outputs for every sample of ``stream`` at the given slice starts.

    Args:
      starts: ``window -> int64 [len(window), count]`` slice starts of each sample.
      each_slice: classify every slice on its own and average the probabilities
        (always for the single-slice DMC; default for set models: the slices form one set).
      per_slice: with ``each_slice``, return the per-slice outputs instead of their mean.
      progress: show a progress bar with this text.

    Returns:
      ``[n, classes]`` probabilities or ``[n]`` values; with ``per_slice``,
      ``[n, count, classes]`` / ``[n, count]``.
    """
    each_slice = isinstance(fitted.module, DMC) or bool(each_slice)
    forward = _forward(fitted.module, fitted.target.kind, each_slice)
    result = None
    batches = -(-len(stream.samples) // stream.batch_size)
    for batch in tqdm(prefetch(stream.eval_batches(starts)), total=batches, desc=progress, disable=progress is None,
                      leave=False, unit="batch"):
        out = np.asarray(forward(fitted.variables, batch.x, batch.position, batch.index >= 0))
        if fitted.target.kind == "regression":
            out = out * fitted.scale[1] + fitted.scale[0]
        if result is None:
            result = np.zeros((len(stream.samples), *out.shape[1:]), np.float32)
        keep = batch.index >= 0
        result[batch.index[keep]] = out[keep]
    return result if per_slice else result.mean(axis=1)


def eval_stream(zoo: Zoo, reader: WeightReader, samples: Samples, spec: SliceSpec, settings: TrainSettings,
                count: int | None = None, model: str = "dmc", batch_size: int | None = None) -> SliceStream:
    """A stream for evaluation with ``count`` slices per sample (default: the spec's),
    ``settings.eval_slices`` slices (or networks, for ``units``) per batch, or
    ``batch_size`` samples per batch (for a model that normalizes by the test batch:
    the training batch size, as the reference tested)."""
    spec = dataclasses.replace(spec, count=count or spec.count)
    batch = batch_size or max(1, settings.eval_slices // spec.count)
    return make_stream(model, zoo, reader, samples, spec, batch_size=batch, buffer_bytes=settings.buffer_bytes)


def random_starts(stream: SliceStream, seed: int, *names) -> Callable[[np.ndarray], np.ndarray]:
    """Seeded random starts for evaluation: the same for every model of a run."""
    table = draw_starts(rng_for(seed, "eval", *names), stream.lo, stream.hi, stream.spec.count)
    return lambda window: table[window]


def evenly(stream: SliceStream) -> Callable[[np.ndarray], np.ndarray]:
    """``stream.spec.count`` evenly spaced starts per sample (the reference's 64 or 100 positions)."""
    return lambda window: even_starts(stream.lo[window], stream.hi[window], stream.spec.count)


# --------------------------------------------------------------------------- #
# The stats baseline
# --------------------------------------------------------------------------- #


def stats_features(zoo: Zoo, reader: WeightReader, samples: Samples, part: str,
                   cache: dict | None = None, model: str = "stats") -> tuple[np.ndarray, list[str]]:
    """Features of every sample's whole vector for the trees: ``(float32 [n, features], names)``.

    ``model``: ``"stats"``, the per-layer statistics (:func:`weight_statistics`), or
    ``"unitstats"``, those and the spread of each layer's units (:func:`unit_spread`).
    Networks of different architectures have different layers; features are aligned by
    name and missing ones are NaN (the trees handle them). ``cache`` maps ``(member,
    snapshot, part, group)`` to a row of one feature group (``"stats"`` or ``"spread"``;
    1-3 KB), so the models and analyses of a run read and describe each vector once.
    """
    if model not in TREE_MODELS:
        raise ConfigError(f"stats_features: model {model!r} is not one of {', '.join(TREE_MODELS)}")
    cache = {} if cache is None else cache
    groups = ("stats",) if model == "stats" else ("stats", "spread")
    describe = {"stats": (weight_statistics, statistic_names), "spread": (unit_spread, unit_spread_names)}
    keys = [(int(m), int(s), part) for m, s in zip(samples.member, samples.snapshot)]
    of = network_layouts(zoo, samples.member)  # member -> segments
    missing = np.array([i for i, key in enumerate(keys) if any(key + (g,) not in cache for g in groups)],
                       np.int64)
    if len(missing):
        for i, vector in reader.read(samples.member[missing], samples.snapshot[missing]):
            key = keys[missing[i]]
            for group in groups:
                if key + (group,) not in cache:
                    cache[key + (group,)] = describe[group][0](vector, of[key[0]], part)

    def names_of(segments):
        return [name for group in groups for name in describe[group][1](segments, part)]

    layouts = {segments: names_of(segments) for segments in dict.fromkeys(of[m] for m in samples.member.tolist())}
    names = list(dict.fromkeys(name for group in layouts.values() for name in group))
    column = {name: j for j, name in enumerate(names)}
    columns = {segments: np.array([column[n] for n in group]) for segments, group in layouts.items()}
    table = np.full((len(keys), len(names)), np.nan, np.float32)
    for i, key in enumerate(keys):
        table[i, columns[of[key[0]]]] = np.concatenate([cache[key + (group,)] for group in groups])
    return table, names


def _threads(samples: int):
    """OpenMP threads for the trees: one below 10,000 samples, where spinning threads cost
    more than they give (30x slower on a busy 2-core machine), else the default."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(1 if samples < 10_000 else None)


def fit_stats(target: Target, features: np.ndarray, y: np.ndarray, seed: int, iterations: int):
    """Gradient-boosted trees (scikit-learn's histogram GBT) on weight statistics."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    kind = HistGradientBoostingClassifier if target.kind == "classification" else HistGradientBoostingRegressor
    model = kind(max_iter=iterations, early_stopping=False, random_state=seed)
    with _threads(len(features)):
        return model.fit(features, y)


def stats_outputs(model, target: Target, features: np.ndarray) -> np.ndarray:
    """``[n, classes]`` probabilities (every class of the target, in order) or ``[n]`` values."""
    with _threads(len(features)):
        if target.kind == "regression":
            return model.predict(features).astype(np.float32)
        out = np.zeros((len(features), target.num_outputs), np.float32)
        out[:, model.classes_] = model.predict_proba(features)
    return out


# --------------------------------------------------------------------------- #
# Metrics
# --------------------------------------------------------------------------- #


def _per_network(values: np.ndarray, members: np.ndarray) -> np.ndarray:
    ids, inverse = np.unique(members, return_inverse=True)
    return np.bincount(inverse, values) / np.bincount(inverse)


def slice_metrics(target: Target, outputs: np.ndarray, samples: Samples) -> dict:
    """The reference's 64-slice number from per-slice outputs ``[n, slices, (classes)]``
    (:func:`predict` with ``per_slice``): the fraction of a sample's slices classified
    correctly, averaged per network and then over networks, not a vote (regression: the
    mean error of single slices). Returns ``accuracy`` (or ``mae``) with ``ci95`` and
    ``sample_accuracy`` (or ``sample_mae``)."""
    if target.kind == "classification":
        values = (outputs.argmax(-1) == samples.y[:, None]).mean(1)
        name = "accuracy"
    else:
        values = np.abs(outputs - samples.y[:, None]).mean(1)
        name = "mae"
    value, ci = _mean_ci(_per_network(values.astype(np.float64), samples.member))
    return {name: value, "ci95": ci, f"sample_{name}": float(values.mean())}


def _mean_ci(values: np.ndarray) -> tuple[float, float]:
    if len(values) < 2:
        return float(np.mean(values)), float("nan")
    return float(np.mean(values)), float(1.96 * np.std(values, ddof=1) / np.sqrt(len(values)))


def metrics(target: Target, outputs: np.ndarray, samples: Samples, chance_value: float | None = None) -> dict:
    """Test metrics of ``outputs`` (as from :func:`predict`) against ``samples.y``.

    Classification: ``accuracy`` (mean over networks of their per-snapshot accuracy)
    with ``ci95``, ``sample_accuracy``, ``confusion`` (rows true, columns predicted).
    Regression: ``mae`` (mean over networks) with ``ci95``; over samples, the rank
    correlations ``spearman`` and ``kendall_tau`` (Kendall's tau-b, the metric NFN,
    neural graphs and ScaleGMN report for test-accuracy prediction on the Small CNN
    Zoo) and ``r2``, the coefficient of determination (1 - residual / total sum of squares).
    """
    if target.kind == "classification":
        predicted = outputs.argmax(-1)
        correct = (predicted == samples.y).astype(np.float64)
        accuracy, ci = _mean_ci(_per_network(correct, samples.member))
        confusion = np.zeros((target.num_outputs, target.num_outputs), np.int64)
        np.add.at(confusion, (samples.y, predicted), 1)
        return {"accuracy": accuracy, "ci95": ci, "sample_accuracy": float(correct.mean()),
                "confusion": confusion.tolist()}
    from scipy.stats import kendalltau, spearmanr

    errors = np.abs(outputs - samples.y).astype(np.float64)
    mae, ci = _mean_ci(_per_network(errors, samples.member))
    varied = len(np.unique(outputs)) > 1 and len(np.unique(samples.y)) > 1
    rho = float(spearmanr(outputs, samples.y).statistic) if varied else 0.0
    tau = float(kendalltau(outputs, samples.y).statistic) if varied else 0.0
    truth = samples.y.astype(np.float64)
    total = float(np.sum((truth - truth.mean()) ** 2))
    r2 = 1.0 - float(np.sum((truth - outputs) ** 2)) / total if total > 0 else float("nan")
    return {"mae": mae, "ci95": ci, "spearman": rho, "kendall_tau": tau, "r2": r2}


def headline(target: Target, result: dict) -> float:
    """The one number of a result: accuracy (classification) or MAE (regression)."""
    return result["accuracy"] if target.kind == "classification" else result["mae"]


# --------------------------------------------------------------------------- #
# Throughput
# --------------------------------------------------------------------------- #


def throughput(module: nn.Module, target: Target, stream: SliceStream, settings: TrainSettings, steps: int,
               seed: int = 0) -> dict:
    """Meta-training speed with and without data loading.

    Measures, in seconds per step and slices per second:

    * ``"pipeline_cold"``: one epoch of batches from the zoo (reading, flattening,
      slicing, batching; fills the vector cache when it is large enough);
    * ``"pipeline"``: one more epoch of batches, no training (vector cache warm);
    * ``"compute"``: ``steps`` train steps on one batch already on the device;
    * ``"train"``: one epoch of train steps fed by the pipeline, as :func:`fit` runs.

    The train step is compiled first (not timed).
    """
    rng = rng_for(seed, "throughput")
    out = {}
    for name in ("pipeline_cold", "pipeline"):
        start, count = time.perf_counter(), 0
        for batch in stream.train_epoch(rng):
            count += 1
        out[name] = (time.perf_counter() - start, count)
    optimizer, step = make_step(module, target.kind)
    lrate = np.float32(settings.lrate)
    variables = init_variables(module, stream, settings.batch_size, seed)
    opt_state = optimizer.init(variables["params"])
    key = jax.random.key(seed)
    y_of = (lambda b: b.y) if target.kind == "classification" else (lambda b: b.y.astype(np.float32))
    batch = next(iter(stream.train_epoch(rng)))
    x, position, y = jax.device_put((batch.x, batch.position, y_of(batch)))
    variables, opt_state, loss, _ = step(variables, opt_state, x, position, y, key, lrate)
    jax.block_until_ready(loss)
    start = time.perf_counter()
    for i in range(steps):
        variables, opt_state, loss, _ = step(variables, opt_state, x, position, y, jax.random.fold_in(key, i), lrate)
    jax.block_until_ready(loss)
    out["compute"] = (time.perf_counter() - start, steps)
    start, count = time.perf_counter(), 0
    for batch in prefetch(stream.train_epoch(rng)):
        variables, opt_state, loss, _ = step(variables, opt_state, batch.x, batch.position, y_of(batch),
                                             jax.random.fold_in(key, count), lrate)
        count += 1
    jax.block_until_ready(loss)
    out["train"] = (time.perf_counter() - start, count)
    slices = settings.batch_size * stream.spec.count
    return {
        name: {"steps": n, "seconds_per_step": t / max(n, 1), "slices_per_second": slices * n / max(t, 1e-9)}
        for name, (t, n) in out.items()
    }
