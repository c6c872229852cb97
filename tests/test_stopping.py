"""Per-member early stopping, the reference's rules."""

from nwsjax.stopping import StoppingConfig, stop_reason

CONFIG = StoppingConfig(max_epochs=100, min_epochs=20)


def test_never_before_min_epochs_and_always_at_max():
    falling = [1.0 - 0.01 * i for i in range(19)]
    assert stop_reason(falling, CONFIG) is None
    assert stop_reason([0.5] * 100, StoppingConfig(max_epochs=100, min_epochs=20, unchanged=1000)) == "max_epochs"


def test_five_falling_epochs():
    history = [0.1 * i for i in range(20)] + [1.8, 1.7, 1.6, 1.5]
    assert stop_reason(history, CONFIG) is None  # four falls
    assert stop_reason(history + [1.4], CONFIG) == "falling"


def test_thirty_epochs_below_running_mean():
    history = [0.9] * 30 + [0.5, 0.51, 0.5, 0.51] * 7 + [0.5]
    assert stop_reason(history, CONFIG) is None  # 29 below the mean
    assert stop_reason(history + [0.51], CONFIG) == "below_mean"


def test_thirty_epochs_unchanged():
    history = [0.03 * i for i in range(20)] + [0.7] * 30  # above its running mean throughout
    assert stop_reason(history, CONFIG) is None  # 29 unchanged transitions
    assert stop_reason(history + [0.7], CONFIG) == "unchanged"
