"""The population trainer against the single-model reference, and its per-member behaviour.

Exactness, and why two tolerances: a member trained in a population runs the same
model, data order, keys and optimizer code as when trained alone, but inside another
XLA program, so fusion may round differently in the last bit. Without batch norm that
stays at float32 rounding for every optimizer, except where Adam turns a gradient below
rounding into a step of about lr (``conftest.assert_weights_match``: at most one weight
in 10,000, seen once in 20,764). With
batch norm, the bias of a layer followed by batch norm has an exactly-zero true
gradient (the normalisation removes it), so its computed gradient is rounding noise;
Adam and RMSProp divide by its own magnitude and turn it into steps of about 0.1 x lr.
Those members are compared on what the network computes instead (test predictions),
and the momentum member, whose update is proportional to the gradient, still to
float32 tolerance.
"""

import dataclasses

import jax
import numpy as np
import pytest

from conftest import EPOCHS, assert_weights_match, base_member, leaves, train_zoo
from nwsjax.model import Architecture, NWSNet
from nwsjax.reference import train_member
from nwsjax.space import unchecked
from nwsjax.strategy import default_strategy
from nwsjax.zoo import snapshot_exports


CONV = default_strategy().conv  # the reference path runs the trainer's convolution


@pytest.fixture(scope="module")
def population(tmp_path_factory, small_digits):
    """One cohort of members that differ in one property at a time, plus copies."""
    base = base_member()
    members = [
        base,                                                          # 0
        dataclasses.replace(base, optimizer="rmsprop"),                # 1
        dataclasses.replace(base, optimizer="momentum", activation="tanh"),  # 2
        dataclasses.replace(base, augmentation="on", activation="elu"),      # 3
        dataclasses.replace(base, lrate=base.lrate * 0.5),             # 4: only the learning rate differs
        dataclasses.replace(base, initialization="glorot_normal"),     # 5: only the initialization differs
        dataclasses.replace(base, activation="sigmoid"),               # 6: only the activation differs
        dataclasses.replace(base, seed=base.seed + 1),                 # 7: only the seed differs
        base,                                                          # 8: a copy of member 0 elsewhere
    ]
    zoo, _ = train_zoo(tmp_path_factory.mktemp("pop") / "zoo", members, {"digits": small_digits}, epochs=EPOCHS)
    return zoo, members


@pytest.mark.parametrize("member", [0, 1, 2, 3])
def test_member_matches_single_model_reference(population, small_digits, member):
    zoo, members = population
    reference = train_member(members[member], small_digits, EPOCHS, conv_impl=CONV)
    got = zoo.params([member])
    assert_weights_match(got, reference["params"], members[member].lrate)
    # The recorded per-epoch training loss is the reference's, too.
    losses = reference["losses"].reshape(EPOCHS, -1).mean(axis=1)
    curve = zoo.curves[zoo.curves.member == member].sort_values("epoch")
    np.testing.assert_allclose(curve.train_loss.to_numpy(), losses, rtol=1e-5)
    np.testing.assert_allclose(curve.lrate.to_numpy(), [members[member].lrate * 0.96**e for e in range(EPOCHS)], rtol=1e-6)


def test_initialization_is_the_single_model_references_bitwise(population, small_digits):
    """Snapshot 1 of every member is exactly the weights the reference path initializes."""
    zoo, members = population
    for member in range(8):
        reference = train_member(members[member], small_digits, 0, conv_impl=CONV)
        np.testing.assert_array_equal(leaves(zoo.params([member], snapshot=1)), leaves(reference["params"]))


def test_each_hyper_parameter_takes_effect(population):
    zoo, _ = population
    final = zoo.flat(range(9))
    for other in range(1, 8):
        assert np.abs(final[other] - final[0]).max() > 1e-3, f"member {other} equals member 0"
    init = zoo.flat(range(9), snapshot=1)
    np.testing.assert_array_equal(init[4], init[0])  # the learning rate does not touch the initialization
    assert not np.array_equal(init[5], init[0])  # the initialization does
    assert not np.array_equal(init[7], init[0])  # and so does the seed


def test_identical_configs_are_bitwise_identical_anywhere(population):
    zoo, _ = population
    for snapshot in (1, 2, 3):
        a, b = zoo.flat([0, 8], snapshot=snapshot)
        np.testing.assert_array_equal(a, b)


def test_snapshots_are_evenly_spaced_exports(population):
    zoo, _ = population
    row = zoo.members.loc[0]
    assert row.exports == EPOCHS + 1 and row.epochs == EPOCHS and row.status == "finished"
    assert list(row.snapshot_exports) == [1, 2, 3]
    assert list(snapshot_exports(41, 20))[:4] == [1, 3, 5, 7] and snapshot_exports(41, 20)[-1] == 41
    assert list(snapshot_exports(5, 8)) == [1, 2, 2, 3, 3, 4, 4, 5]  # round(linspace(1, 5, 8))


@pytest.fixture(scope="module")
def batch_norm_population(tmp_path_factory, small_digits):
    base = base_member(batch_norm="on")
    members = [base, dataclasses.replace(base, optimizer="momentum"), dataclasses.replace(base, optimizer="rmsprop")]
    zoo, _ = train_zoo(tmp_path_factory.mktemp("bn") / "zoo", members, {"digits": small_digits}, epochs=EPOCHS)
    return zoo, members


def test_batch_norm_members_match_the_reference(batch_norm_population, small_digits):
    zoo, members = batch_norm_population
    x = small_digits.test_images[:256].astype(np.float32) / 255.0
    for i, member in enumerate(members):
        reference = train_member(member, small_digits, EPOCHS, conv_impl=CONV)
        params, stats = zoo.params([i]), zoo.batch_stats([i])
        if member.optimizer == "momentum":
            np.testing.assert_allclose(leaves(params), leaves(reference["params"]), rtol=1e-5, atol=2e-5)
        # Training-mode forward (batch statistics, the same dropout mask): batch norm
        # cancels the noise-driven biases here, so both networks compute the same function.
        net = NWSNet(Architecture.of(member, small_digits.num_classes))
        take = lambda t: jax.tree.map(lambda a: a[0], t)  # noqa: E731

        def logits(p, s):
            out, _ = net.apply({"params": p, "batch_stats": s}, x, activation=0, train=True,
                               mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
            return np.asarray(out)

        ours = logits(take(params), take(stats))
        theirs = logits(reference["params"], reference["batch_stats"])
        agree = np.mean(np.argmax(ours, -1) == np.argmax(theirs, -1))
        if member.optimizer == "momentum":
            np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
        else:
            # Noise-driven steps reach the function slowly: the same network still, but
            # not to float tolerance (RMSProp's first step is +-3.16 lr for any gradient).
            assert agree >= 0.9, (member.optimizer, agree)


def test_diverging_member_leaves_the_others_bitwise_unchanged(tmp_path, small_digits, population):
    """The same population with member 1 forced to diverge: everyone else bitwise unchanged."""
    sane, members = population
    broken = list(members)
    broken[1] = unchecked(members[1], lrate=1e12)  # through the library API, past validation
    zoo, _ = train_zoo(tmp_path / "broken", broken, {"digits": small_digits}, epochs=EPOCHS)

    row = zoo.members.loc[1]
    assert row.status == "diverged" and "non-finite" in row.stop_reason
    assert row.steps < sane.members.loc[1, "steps"]
    others = [i for i in range(len(members)) if i != 1]
    for snapshot in range(1, zoo.num_snapshots + 1):
        assert np.isfinite(zoo.flat([1], snapshot=snapshot)).all()  # its last finite weights are kept
        np.testing.assert_array_equal(zoo.flat(others, snapshot=snapshot), sane.flat(others, snapshot=snapshot))
    np.testing.assert_array_equal(zoo.flat([1], snapshot=1), sane.flat([1], snapshot=1))  # same initialization
    facts = ["epochs", "steps", "exports", "train_loss", "train_acc", "val_acc", "test_acc", "status"]
    # (Storage coordinates, part and row, may differ: the diverged member finished first.)
    assert zoo.members.loc[others, facts].equals(sane.members.loc[others, facts])


def test_knobs_a_whole_cohort_shares_are_compiled_in():
    """What every member has alike becomes a static value of the cohort's programs; the rest stays data."""
    from nwsjax.population import shared_knobs

    base = base_member()
    alike = shared_knobs([base, dataclasses.replace(base, lrate=base.lrate / 2, seed=base.seed + 1)])
    assert alike == {"optimizer": 0, "activation": 0, "initialization": 2, "augmentation": False}
    assert all(type(v) in (int, np.bool_) for v in alike.values())  # the types the static paths test for
    mixed = shared_knobs([base, dataclasses.replace(base, optimizer="momentum", augmentation="on")])
    assert mixed == {"activation": 0, "initialization": 2}
