"""Every batching/convolution strategy against the single-model reference.

A member trained under another strategy runs other kernels (grouped convolutions,
batched products, a loop over chunks), which round differently in the last bit, and
training amplifies rounding. So the weights are compared by their *drift*: the distance
to the reference's weights relative to the distance training moved them. Measured: up
to 1.6e-3 for the augmented elu member under grouped convolutions (``vmap`` + ``xla``),
about 1e-6 for the others; the same member at half the learning rate lands at > 0.2.
"""

import dataclasses

import numpy as np
import pytest

from conftest import EPOCHS, base_member, leaves, train_zoo
from nwsjax.data import subset
from nwsjax.reference import train_member
from nwsjax.strategy import Strategy

BASE = base_member()
MEMBERS = {
    0: BASE,
    2: dataclasses.replace(BASE, optimizer="momentum", activation="tanh"),
    3: dataclasses.replace(BASE, augmentation="on", activation="elu"),
    4: dataclasses.replace(BASE, lrate=BASE.lrate * 0.5),  # member 0 at half the learning rate
    5: dataclasses.replace(BASE, initialization="glorot_normal"),
    6: dataclasses.replace(BASE, activation="sigmoid"),
}
DRIFT = 1e-2  # the largest drift accepted


def drift(got, want, init) -> float:
    """|got - want| relative to |want - init| (flat weight vectors)."""
    return float(np.linalg.norm(got - want) / np.linalg.norm(want - init))


@pytest.fixture(scope="module")
def references(small_digits):
    """``get(member, conv)``: a member's single-model reference run, computed once."""
    cache = {}

    def get(member, conv="im2col"):
        if (member, conv) not in cache:
            cache[member, conv] = train_member(MEMBERS[member], small_digits, EPOCHS, conv_impl=conv)
        return cache[member, conv]

    return get


def test_drift_tells_a_learning_rate_apart(small_digits, references):
    """The measure itself: another learning rate is far beyond the accepted drift."""
    init = leaves(train_member(MEMBERS[0], small_digits, 0, conv_impl="im2col")["params"])
    ref0, ref4 = leaves(references(0)["params"]), leaves(references(4)["params"])
    assert drift(ref4, ref0, init) > 20 * DRIFT


@pytest.mark.parametrize(
    "strategy, compaction",
    [(Strategy("vmap", "xla"), False), (Strategy("vmap", "im2col"), True), (Strategy("chunked", "im2col", chunk=2), False)],
)
def test_every_strategy_gives_the_reference_weights(tmp_path, small_digits, references, strategy, compaction):
    """Members 0, 2, 3 under each strategy land on their single-model references.

    With ``compaction`` the vmap cohort also holds three members on a dataset half as
    large: they finish halfway, leaving half the slots idle, and the cohort moves its
    three remaining members to a program of width 3 (tail compaction) to finish there.
    """
    cohort = [MEMBERS[i] for i in (0, 2, 3)]
    datasets = {"digits": small_digits}
    if compaction:
        half = subset(small_digits, 300)
        datasets["half"] = type(half)(**{**half.__dict__, "name": "half"})
        cohort += [dataclasses.replace(MEMBERS[i], dataset="half") for i in (4, 5, 6)]
    zoo, report = train_zoo(tmp_path / "zoo", cohort, datasets, epochs=EPOCHS, strategy=strategy.name)
    for row, member in enumerate((0, 2, 3)):
        got, init = leaves(zoo.params([row])), leaves(zoo.params([row], snapshot=1))
        want = leaves(references(member, strategy.conv)["params"])
        assert drift(got, want, init) < DRIFT, (member, drift(got, want, init))
    if compaction:
        (label,) = report.compactions
        assert report.compactions[label] == 1 and report.slots[label] == 6
        # 6 slots for the first half, 3 for the second: no idle slot computed.
        assert report.utilization == 1.0, report.utilization
