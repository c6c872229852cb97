"""Training and evaluation of ONE member as pure functions.

These functions see a single network. The population trainer maps them over a
cohort's member axis with an execution strategy (:mod:`nwsjax.strategy`); the
single-model reference path (:mod:`nwsjax.reference`) calls the same model, data
order, random keys and augmentation without any mapping.

Per-member values that vary inside one compiled program (optimizer, activation,
augmentation, seed, learning rate, and in a padded program the member's own
architecture) are passed as :class:`Knobs`, a pytree of scalars: Python ints for one
model, int32/float32 arrays in a cohort.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nwsjax import optim
from nwsjax.augment import augment
from nwsjax.model import NWSNet

__all__ = [
    "Knobs",
    "MemberState",
    "DeviceData",
    "init_key",
    "step_keys",
    "epoch_order",
    "init_member",
    "to_float",
    "train_step",
    "train_round",
    "evaluate",
]


class Knobs(NamedTuple):
    """Per-member hyper-parameters that are data, not program structure."""

    seed: Any  # int32: the member's seed (all its random streams derive from it)
    optimizer: Any  # int32: index into optim.OPTIMIZERS
    activation: Any  # int32: index into model.ACTIVATIONS
    initialization: Any  # int32: index into model.INITIALIZATIONS (nwsjax.initialization)
    augmentation: Any  # bool
    lrate: Any  # float32: the current epoch's learning rate
    shape: Any = None  # model.MemberShape in a padded program (nwsjax.padding), else None


class MemberState(NamedTuple):
    """Everything that changes when a member trains."""

    params: Any
    batch_stats: Any  # {} without batch norm
    opt: optim.MemberOptState


class DeviceData(NamedTuple):
    """All datasets of a run, concatenated, resident on the device.

    Attributes:
      images: uint8 [n_images, 32, 32, 3]; v means v / 255.
      labels: int32 [n_images].
    """

    images: jax.Array
    labels: jax.Array


def init_key(seed) -> jax.Array:
    """Key of a member's parameter initialization."""
    return jax.random.fold_in(jax.random.key(seed), 0)


def step_keys(seed, step) -> tuple[jax.Array, jax.Array]:
    """(augmentation key, dropout key) of a member's training step number ``step``."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), 1), step)
    augment_key, dropout_key = jax.random.split(key)
    return augment_key, dropout_key


def epoch_order(seed: int, epoch: int, n_train: int, batch_size: int) -> np.ndarray:
    """A member's training batches of one epoch.

    Returns:
      int32 [n_train // batch_size, batch_size]: indices into the member's training
      split, a fresh permutation every epoch, the last partial batch dropped.
    """
    steps = n_train // batch_size
    order = np.random.default_rng([seed, epoch]).permutation(n_train)[: steps * batch_size]
    return order.reshape(steps, batch_size).astype(np.int32)


def init_member(model: NWSNet, knobs: Knobs) -> MemberState:
    """Initial parameters, batch-norm statistics and optimizer state of one member."""
    variables = model.init(
        {"params": init_key(knobs.seed)},
        jnp.zeros((1, 32, 32, 3), jnp.float32),
        activation=knobs.activation,
        initialization=knobs.initialization,
        train=False,
        shape=knobs.shape,
    )
    params = variables["params"]
    opt = optim.set_hyperparams(member_optimizer(knobs).init(params), knobs.optimizer, knobs.lrate)
    return MemberState(params, variables.get("batch_stats", {}), opt)


def member_optimizer(knobs: Knobs):
    """The member's optax optimizer (:func:`nwsjax.optim.member_optimizer`); a shared
    optimizer choice (a Python int knob) compiles only its branch."""
    return optim.member_optimizer(knobs.optimizer if isinstance(knobs.optimizer, int) else None)


def to_float(images: jax.Array) -> jax.Array:
    """uint8 [..., 32, 32, 3] -> float32 in [0, 1]."""
    return images.astype(jnp.float32) / 255.0


def load_batch(data: DeviceData, indices: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Images float32 [B, 32, 32, 3] in [0, 1] and labels int32 [B] at ``indices`` [B]."""
    return to_float(data.images[indices]), data.labels[indices]


def loss_and_updates(model: NWSNet, state: MemberState, knobs: Knobs, images, labels, dropout_key):
    """Loss, accuracy sum and the new state of one training step on one batch."""

    def loss_fn(params):
        logits, mutated = model.apply(
            {"params": params, "batch_stats": state.batch_stats},
            images,
            activation=knobs.activation,
            train=True,
            shape=knobs.shape,
            mutable=["batch_stats"],
            rngs={"dropout": dropout_key},
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        return loss, (logits, mutated.get("batch_stats", {}))

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    opt = optim.set_hyperparams(state.opt, knobs.optimizer, knobs.lrate)  # this epoch's rate, from the schedule
    updates, opt = member_optimizer(knobs).update(grads, opt)
    params = optax.apply_updates(state.params, updates)
    correct = jnp.sum(jnp.argmax(logits, -1) == labels).astype(jnp.float32)
    return loss, correct, MemberState(params, batch_stats, opt)


def train_step(model, state, knobs, data, indices, step):
    """One step of one member on the batch at ``indices`` (int32 [B]).

    Returns ``(loss, correct, new_state)``.
    """
    augment_key, dropout_key = step_keys(knobs.seed, step)
    images, labels = load_batch(data, indices)
    if isinstance(knobs.augmentation, (bool, np.bool_)):
        images = augment(augment_key, images) if knobs.augmentation else images
    else:
        images = jax.lax.cond(
            knobs.augmentation, augment, lambda _, x: x, augment_key, images
        )
    return loss_and_updates(model, state, knobs, images, labels, dropout_key)


def _all_finite(tree) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves))


class RoundOutput(NamedTuple):
    """What one member reports after a round (sums over the round's steps)."""

    loss_sum: jax.Array  # float32
    correct_sum: jax.Array  # float32, correctly classified training images
    steps_done: jax.Array  # int32, steps taken (fewer than asked if it diverged)
    healthy: jax.Array  # bool, False once a step produced NaN/Inf


def train_round(model, state, knobs, data, plan, offset, position, step, n_steps, active):
    """``n_steps`` consecutive training steps of one member (no epoch boundary inside).

    Args:
      plan: int32 [max_steps_per_epoch, B], this epoch's batches (training-split
        indices; rows past the epoch length are unused).
      offset: int32, index of the member's training split in ``data``.
      position: int32, the first row of ``plan`` to train on.
      step: int32, the member's global step count before the round.
      n_steps: int32, steps to take; ``position + n_steps`` <= epoch length.
      active: bool; an inactive member is returned unchanged (finished or frozen).

    A step whose loss or new weights are not finite is discarded and the member
    stops there: its state stays at the last finite step and ``healthy`` is False.
    """

    def body(i, carry):
        state, loss_sum, correct_sum, done, healthy = carry
        loss, correct, new = train_step(model, state, knobs, data, plan[position + i] + offset, step + i)
        ok = healthy & jnp.isfinite(loss) & _all_finite(new.params)
        state = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)
        return (
            state,
            loss_sum + jnp.where(ok, loss, 0.0),
            correct_sum + jnp.where(ok, correct, 0.0),
            done + ok.astype(jnp.int32),
            ok,
        )

    def run(state):
        zero = jnp.zeros([], jnp.float32)
        carry = (state, zero, zero, jnp.zeros([], jnp.int32), jnp.array(True))
        state, loss_sum, correct_sum, done, healthy = jax.lax.fori_loop(0, n_steps, body, carry)
        return state, RoundOutput(loss_sum, correct_sum, done, healthy)

    def skip(state):
        zero = jnp.zeros([], jnp.float32)
        return state, RoundOutput(zero, zero, jnp.zeros([], jnp.int32), jnp.array(True))

    return jax.lax.cond(active, run, skip, state)


def evaluate(model, state, knobs, data, start, count, chunk: int, n_chunks: int, active):
    """Correctly classified images of one member on ``data[start : start + count]``.

    Inference mode (running batch-norm statistics, no dropout), in ``n_chunks`` chunks
    of ``chunk`` images (static; ``n_chunks * chunk >= count``). Returns float32; 0
    when ``active`` is False (the work is skipped where the strategy allows).
    """

    def body(c, total):
        index = start + c * chunk + jnp.arange(chunk)
        valid = index < start + count
        images, labels = load_batch(data, jnp.where(valid, index, start))
        logits = model.apply(
            {"params": state.params, "batch_stats": state.batch_stats},
            images,
            activation=knobs.activation,
            train=False,
            shape=knobs.shape,
        )
        hits = (jnp.argmax(logits, -1) == labels) & valid
        return total + jnp.sum(hits).astype(jnp.float32)

    run = lambda: jax.lax.fori_loop(0, n_chunks, body, jnp.zeros([], jnp.float32))  # noqa: E731
    return jax.lax.cond(active, run, lambda: jnp.zeros([], jnp.float32))
