"""The single-model reference path: one member trained alone, with plain Flax and optax.

No vmap, no stacking, no population bookkeeping: the NWS network, its optimizer from
``optax`` (``adam``, ``rmsprop`` or ``sgd`` with momentum 0.95, the learning rate
injected per epoch), one jitted step per batch in a Python loop. It draws the same
data order, augmentation and dropout keys as the population trainer
(:func:`nwsjax.step.epoch_order`, :func:`nwsjax.step.step_keys`), so a member trained
inside a population must end with the weights this path gives.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from nwsjax import optim, step
from nwsjax.augment import augment
from nwsjax.data import Dataset
from nwsjax.model import Architecture, NWSNet
from nwsjax.space import MemberConfig, option_index

__all__ = ["train_member"]


def _step_fn(model: NWSNet, optimizer: optax.GradientTransformation, activation: int, augmented: bool):
    @jax.jit
    def train_step(params, batch_stats, opt_state, images, labels, augment_key, dropout_key):
        images = step.to_float(images)
        if augmented:
            images = augment(augment_key, images)

        def loss_fn(params):
            logits, mutated = model.apply(
                {"params": params, "batch_stats": batch_stats},
                images,
                activation=activation,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": dropout_key},
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, mutated.get("batch_stats", {})

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    return train_step


def train_member(
    member: MemberConfig, dataset: Dataset, epochs: int, *, conv_impl: str = "xla"
) -> dict[str, Any]:
    """Trains ``member`` alone for ``epochs`` full epochs.

    Returns:
      ``{"params", "batch_stats", "losses"}`` with ``losses`` float32 [steps].
    """
    model = NWSNet(Architecture.of(member, dataset.num_classes), conv_impl=conv_impl)
    variables = model.init(
        {"params": step.init_key(member.seed)},
        jnp.zeros((1, 32, 32, 3), jnp.float32),
        activation=option_index("activation", member.activation),
        initialization=option_index("initialization", member.initialization),
        train=False,
    )
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    optimizer = optim.reference_optimizer(member.optimizer)
    opt_state = optimizer.init(params)
    train_step = _step_fn(
        model, optimizer, option_index("activation", member.activation), member.augmentation == "on"
    )
    images = dataset.train_images
    labels = dataset.train_labels.astype(np.int32)
    losses, global_step = [], 0
    for epoch in range(epochs):
        opt_state.hyperparams["learning_rate"] = jnp.float32(optim.epoch_lrate(member.lrate, epoch))
        for batch in step.epoch_order(member.seed, epoch, len(labels), member.batch_size):
            augment_key, dropout_key = step.step_keys(member.seed, global_step)
            params, batch_stats, opt_state, loss = train_step(
                params, batch_stats, opt_state, images[batch], jnp.asarray(labels[batch]), augment_key, dropout_key
            )
            losses.append(loss)
            global_step += 1
    return {"params": params, "batch_stats": batch_stats, "losses": np.asarray(losses)}
