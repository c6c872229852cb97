"""Early stopping on validation accuracy, per member (the reference's rules)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from nwsjax.errors import ConfigError

__all__ = ["StoppingConfig", "stop_reason"]


@dataclasses.dataclass(frozen=True)
class StoppingConfig:
    """When a member stops training.

    Attributes:
      max_epochs: hard limit (the reference: 1000).
      min_epochs: never stop earlier (the reference: 20).
      falling: stop after this many consecutive epochs of falling validation accuracy.
      below_mean: ... or this many consecutive epochs below its running mean.
      unchanged: ... or this many consecutive epochs without change.
    """

    max_epochs: int = 1000
    min_epochs: int = 20
    falling: int = 5
    below_mean: int = 30
    unchanged: int = 30

    def __post_init__(self):
        if self.max_epochs < 1:
            raise ConfigError(f"epochs={self.max_epochs}: need at least 1 epoch")
        if self.min_epochs < 0:
            raise ConfigError(f"min_epochs={self.min_epochs}: must be >= 0")


def _run_length(flags: Sequence[bool]) -> int:
    """Length of the run of True at the end of ``flags``."""
    count = 0
    for flag in reversed(flags):
        if not flag:
            break
        count += 1
    return count


def stop_reason(val_accuracy: Sequence[float], config: StoppingConfig) -> str | None:
    """Why a member stops after the epochs whose validation accuracies are given, or None.

    Args:
      val_accuracy: one value per epoch trained so far, oldest first.
    """
    epochs = len(val_accuracy)
    if epochs >= config.max_epochs:
        return "max_epochs"
    if epochs < max(config.min_epochs, 1):
        return None
    acc = list(val_accuracy)
    falling = [b < a for a, b in zip(acc, acc[1:])]
    if _run_length(falling) >= config.falling:
        return "falling"
    below, total = [], 0.0
    for i, value in enumerate(acc):
        total += value
        below.append(value < total / (i + 1))
    if _run_length(below) >= config.below_mean:
        return "below_mean"
    same = [b == a for a, b in zip(acc, acc[1:])]
    if _run_length(same) >= config.unchanged:
        return "unchanged"
    return None
