"""Per-member optimizers with the optimizer choice as data.

A population holds members trained with Adam, RMSProp and momentum SGD in one
compiled step. Every member carries the same optimizer state, :class:`SlotState`
(a step count and two parameter-shaped slots), and :func:`update` routes it through
the member's own optax optimizer (:func:`reference_optimizer`):

=========  =========================  =====================
optimizer  ``first`` slot             ``second`` slot
=========  =========================  =====================
adam       first moment (mu)          second moment (nu)
rmsprop    unused (zeros)             mean square (nu)
momentum   trace (momentum 0.95)      unused (zeros)
=========  =========================  =====================

So a member's updates are computed by the same code and constants as
``optax.adam``, ``optax.rmsprop`` or ``optax.sgd(momentum=0.95)`` with the learning
rate injected, which is what the single-model reference path uses.

:func:`member_optimizer` is all three as one ``optax.GradientTransformation`` whose
state holds the member's optimizer choice and learning rate beside the slots, as
``optax.inject_hyperparams`` keeps its hyper-parameters: set them
(:func:`set_hyperparams`) and update. The trainer sets them at every step from the
member's knobs (:class:`nwsjax.step.Knobs`), which the host schedule keeps: the rate
changes at each member's own epoch boundary. Where every member of a program shares an
optimizer, the choice is a Python int and only that branch is compiled.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from nwsjax.space import PROPERTIES

__all__ = ["OPTIMIZERS", "SlotState", "MemberOptState", "member_optimizer", "set_hyperparams", "init", "update",
           "reference_optimizer", "epoch_lrate"]

OPTIMIZERS: tuple[str, ...] = PROPERTIES["optimizer"].options
MOMENTUM = 0.95
LRATE_DECAY = 0.96  # per epoch, staircase

# optax defaults, spelled out so both paths use the very same values.
_ADAM = dict(b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0)
_RMSPROP = dict(decay=0.9, eps=1e-8, initial_scale=0.0, eps_in_sqrt=True, bias_correction=False)


class SlotState(NamedTuple):
    """Optimizer state of one member (leaves gain a leading member axis in a cohort)."""

    count: jax.Array  # int32 [], steps taken (Adam's bias correction)
    first: optax.Params  # like params
    second: optax.Params  # like params


class MemberOptState(NamedTuple):
    """State of :func:`member_optimizer` (leaves gain a leading member axis in a cohort).

    Attributes:
      hyperparams: ``{"optimizer": int32 [] index into OPTIMIZERS, "learning_rate": float32 []}``.
      slots: the slots the chosen optimizer updates.
    """

    hyperparams: dict
    slots: SlotState


def member_optimizer(optimizer: int | None = None) -> optax.GradientTransformation:
    """Adam, RMSProp and momentum SGD as one optax transformation, the choice in its state.

    ``init(params)`` starts with optimizer ``optimizer or 0`` at learning rate 0; set both
    with :func:`set_hyperparams` before updating, as with ``optax.inject_hyperparams``.
    ``update(grads, state)`` runs the chosen optimizer (:func:`update`).

    Args:
      optimizer: a Python int fixes the choice at trace time, so only that branch is
        compiled; None routes by ``state.hyperparams["optimizer"]`` (``lax.switch``).
    """

    def init_fn(params: optax.Params) -> MemberOptState:
        return set_hyperparams(MemberOptState({}, init(params)), optimizer or 0, 0.0)

    def update_fn(grads: optax.Updates, state: MemberOptState, params=None):
        del params
        choice = state.hyperparams["optimizer"] if optimizer is None else optimizer
        updates, slots = update(grads, state.slots, choice, state.hyperparams["learning_rate"])
        return updates, MemberOptState(state.hyperparams, slots)

    return optax.GradientTransformation(init_fn, update_fn)


def set_hyperparams(state: MemberOptState, optimizer, learning_rate) -> MemberOptState:
    """``state`` with its optimizer index and learning rate (Python or traced scalars) replaced."""
    return state._replace(hyperparams={"optimizer": jnp.asarray(optimizer, jnp.int32),
                                       "learning_rate": jnp.asarray(learning_rate, jnp.float32)})


def init(params: optax.Params) -> SlotState:
    zeros = jax.tree.map(jnp.zeros_like, params)
    return SlotState(jnp.zeros([], jnp.int32), zeros, zeros)


def _routed(name: str, read, write):
    """One branch: the member's slots run through ``reference_optimizer(name)`` itself.

    The injected state (hyper-parameters as float32 arrays, as optax stores them) is
    rebuilt around the slots, so the update is computed by the very code and
    constants of the single-model optimizer.
    """

    def branch(grads, state: SlotState, lrate):
        optimizer = reference_optimizer(name)
        template = optimizer.init(grads)
        injected = template._replace(
            count=state.count,
            hyperparams=dict(template.hyperparams, learning_rate=lrate),
            inner_state=read(template.inner_state, state),
        )
        updates, injected = optimizer.update(grads, injected)
        return updates, write(injected.inner_state, state)

    return branch


_BRANCHES = (
    _routed(
        "adam",
        lambda inner, s: (optax.ScaleByAdamState(s.count, s.first, s.second), *inner[1:]),
        lambda inner, s: SlotState(inner[0].count, inner[0].mu, inner[0].nu),
    ),
    _routed(
        "rmsprop",
        lambda inner, s: (optax.ScaleByRmsState(s.second), *inner[1:]),
        lambda inner, s: SlotState(s.count, s.first, inner[0].nu),
    ),
    _routed(
        "momentum",
        lambda inner, s: (optax.TraceState(s.first), *inner[1:]),
        lambda inner, s: SlotState(s.count, inner[0].trace, s.second),
    ),
)


def update(
    grads: optax.Updates, state: SlotState, optimizer: int | jax.Array, lrate: jax.Array
) -> tuple[optax.Updates, SlotState]:
    """One optimizer step of one member.

    Args:
      grads: gradients, like params.
      state: the member's :class:`SlotState`.
      optimizer: index into :data:`OPTIMIZERS` (Python int or traced int32 scalar).
      lrate: float32 scalar, this epoch's learning rate (:func:`epoch_lrate`).

    Returns:
      ``(updates, new_state)``; apply with ``optax.apply_updates``.
    """
    if isinstance(optimizer, int):
        return _BRANCHES[optimizer](grads, state, lrate)
    return jax.lax.switch(optimizer, _BRANCHES, grads, state, lrate)


def epoch_lrate(lrate: float, epoch: int) -> float:
    """Learning rate of 0-based ``epoch``: ``lrate * 0.96**epoch`` (staircase decay).

    Computed in float64 on the host and rounded once to float32, so the population
    and the reference path use the very same value.
    """
    import numpy as np

    return float(np.float32(lrate * LRATE_DECAY**epoch))


def reference_optimizer(name: str) -> optax.GradientTransformation:
    """The plain optax optimizer of one member, learning rate injectable as a hyper-parameter.

    Set ``state.hyperparams["learning_rate"]`` to :func:`epoch_lrate` each epoch.
    """
    if name == "adam":
        return optax.inject_hyperparams(optax.adam)(learning_rate=0.0, **_ADAM)
    if name == "rmsprop":
        return optax.inject_hyperparams(optax.rmsprop)(learning_rate=0.0, **_RMSPROP)
    if name == "momentum":
        return optax.inject_hyperparams(optax.sgd)(learning_rate=0.0, momentum=MOMENTUM)
    raise ValueError(f"unknown optimizer {name!r}; choose one of {OPTIMIZERS}")
