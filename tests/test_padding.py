"""Mixed architectures in one padded program: exact against the single-model reference, padding inert.

Members of every filter size, depth and width option train together in padded
programs (``pad_architectures="all"``), one without and one with batch norm. Each is
compared with the reference path at its own architecture, under the tolerances of
``test_population.py`` (a padded convolution adds exact zeros, but in another order).
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_weights_match, base_member, leaves, train_zoo
from nwsjax import step
from nwsjax.model import Architecture, MemberShape, NWSNet
from nwsjax.padding import crop, embed, program_architecture
from nwsjax.population import knobs_of
from nwsjax.programs import CostModel, plan_programs, train_flops
from nwsjax.data import subset
from nwsjax.reference import train_member
from nwsjax.space import sample_members
from nwsjax.strategy import default_strategy
from nwsjax.errors import ConfigError

CONV = default_strategy().conv
EPOCHS = 1


def _arch(filter_size, depth_conv, depth_fc, width_conv, width_fc):
    return dict(filter_size=filter_size, depth_conv=depth_conv, depth_fc=depth_fc, width_conv=width_conv,
                width_fc=width_fc)


# Every option of every architecture property, every optimizer, augmentation and batch norm on and off
# (the batch-norm program smaller than the full family, to keep the suite fast).
MEMBERS = [
    base_member(**_arch(3, 3, 2, 4, 64)),                                                   # 0
    base_member(**_arch(5, 4, 3, 8, 128), optimizer="rmsprop", augmentation="on"),          # 1
    base_member(**_arch(7, 5, 4, 12, 192), optimizer="momentum", activation="tanh"),        # 2
    base_member(**_arch(3, 3, 2, 4, 64)),                                                   # 3: a copy of 0
    base_member(**_arch(3, 4, 2, 8, 64), batch_norm="on", augmentation="on"),               # 4
    base_member(**_arch(5, 3, 3, 4, 128), batch_norm="on", optimizer="momentum"),           # 5
    base_member(**_arch(3, 3, 2, 4, 64), batch_norm="on", optimizer="rmsprop", activation="elu"),  # 6
]


@pytest.fixture(scope="module")
def digits_300(small_digits):
    return subset(small_digits, 300)


@pytest.fixture(scope="module")
def padded(tmp_path_factory, digits_300):
    zoo, report = train_zoo(tmp_path_factory.mktemp("padded") / "zoo", MEMBERS, {"digits": digits_300},
                            epochs=EPOCHS, pad_architectures="all")
    return zoo, report


def test_one_padded_program_per_batch_norm_setting(padded):
    zoo, report = padded
    assert sorted(report.programs) == ["pad-f5-c4-d3-w8-u128-b128", "pad-f7-c5-d4-w12-u192-nobn-b128"]
    assert len(report.compile_seconds) == 2
    assert 0 < report.useful_flop_fraction < 0.6  # most of a full-family program is padding here
    # The zoo keeps each member at its own architecture, in a part of its own shape.
    for i, member in enumerate(MEMBERS):
        arch = Architecture.of(member, 10)
        assert zoo.architecture(i) == arch and zoo.members.loc[i, "architecture"] == arch.label()


@pytest.mark.parametrize("member", [0, 1, 5])  # (member 2 is the program's own architecture)
def test_padded_member_matches_the_reference_at_its_architecture(padded, digits_300, member):
    zoo, _ = padded
    config = MEMBERS[member]
    reference = train_member(config, digits_300, EPOCHS, conv_impl=CONV)
    curve = zoo.curves[zoo.curves.member == member].sort_values("epoch")
    np.testing.assert_allclose(curve.train_loss, reference["losses"].reshape(EPOCHS, -1).mean(1), rtol=1e-5)
    if config.optimizer == "rmsprop":
        # RMSProp's first step is +-3.16 lr whatever the gradient's size, so a weight whose
        # true gradient is below rounding (padding adds exact zeros, in another order)
        # may step either way. Compared on what the network computes instead.
        net = NWSNet(Architecture.of(config, 10))
        x = digits_300.test_images[:256].astype(np.float32) / 255.0
        logits = lambda p: np.asarray(net.apply({"params": p}, x, activation=1 if config.activation == "elu" else 0))  # noqa: E731
        ours = logits(jax.tree.map(lambda a: a[0], zoo.params([member])))
        np.testing.assert_allclose(ours, logits(reference["params"]), rtol=1e-2, atol=1e-2)
        assert np.mean(np.argmax(ours, -1) == np.argmax(logits(reference["params"]), -1)) >= 0.97
    else:
        assert_weights_match(zoo.params([member]), reference["params"], config.lrate)
    if MEMBERS[member].batch_norm == "on":
        np.testing.assert_allclose(leaves(zoo.batch_stats([member])), leaves(reference["batch_stats"]),
                                   rtol=1e-4, atol=1e-5)
    initial = train_member(MEMBERS[member], digits_300, 0, conv_impl=CONV)
    np.testing.assert_array_equal(leaves(zoo.params([member], snapshot=1)), leaves(initial["params"]))


@pytest.mark.parametrize("member", [4, 6])
def test_padded_batch_norm_member_computes_the_references_function(padded, digits_300, member):
    """Adam and RMSProp with batch norm: compared on predictions (see test_population.py)."""
    zoo, _ = padded
    config = MEMBERS[member]
    reference = train_member(config, digits_300, EPOCHS, conv_impl=CONV)
    net = NWSNet(Architecture.of(config, 10))
    x = digits_300.test_images[:256].astype(np.float32) / 255.0
    take = lambda t: jax.tree.map(lambda a: a[0], t)  # noqa: E731

    def predict(params, stats):
        out = net.apply({"params": params, "batch_stats": stats}, x, activation=0, train=False)
        return np.argmax(np.asarray(out), -1)

    ours = predict(take(zoo.params([member])), take(zoo.batch_stats([member])))
    agree = np.mean(ours == predict(reference["params"], reference["batch_stats"]))
    assert agree >= 0.9, agree
    initial = train_member(config, digits_300, 0, conv_impl=CONV)
    np.testing.assert_array_equal(leaves(zoo.params([member], snapshot=1)), leaves(initial["params"]))


def test_identical_configs_identical_weights_in_a_padded_program(padded):
    zoo, _ = padded
    for snapshot in range(1, zoo.num_snapshots + 1):
        a, b = zoo.flat([0, 3], snapshot=snapshot)
        np.testing.assert_array_equal(a, b)


def test_padding_stays_exactly_zero_under_every_optimizer(digits_300):
    """Weights and optimizer slots of padding are exactly zero after training steps, for each optimizer."""
    config = MEMBERS[6]
    program = program_architecture([Architecture.of(m, 10) for m in MEMBERS if m.batch_norm == "on"])
    member = Architecture.of(config, 10)
    model = NWSNet(program, conv_impl=CONV, padded=True)
    data = step.DeviceData(jnp.asarray(digits_300.train_images), jnp.asarray(digits_300.train_labels.astype(np.int32)))
    plan = jnp.asarray(step.epoch_order(config.seed, 0, len(digits_300.train_labels), 128))

    @jax.jit
    def train(knobs):  # the optimizer traced: one compile for all three
        state = step.init_member(model, knobs)
        return step.train_round(model, state, knobs, data, plan, 0, 0, 0, 3, True)

    for optimizer in range(3):
        knobs = knobs_of(config, MemberShape.of(member))._replace(optimizer=jnp.int32(optimizer))
        state, out = jax.device_get(train(knobs))
        assert int(out.steps_done) == 3
        for tree in (state.params, state.opt.slots.first, state.opt.slots.second):
            restored = embed(crop(tree, program, member), member, program, tree)
            jax.tree.map(np.testing.assert_array_equal, restored, tree)  # everything outside the member is 0
        assert np.abs(leaves(state.params)).max() > 0


def test_crop_and_embed_are_inverse():
    program = Architecture(7, 5, 4, 12, 192)
    member = Architecture(3, 4, 3, 8, 64)
    net = NWSNet(program, padded=True)
    shape = MemberShape.of(member)
    params = net.init({"params": jax.random.key(0)}, jnp.zeros((1, 32, 32, 3)), activation=0, shape=shape)["params"]
    params = jax.device_get(params)
    own = crop(params, program, member)
    alone = NWSNet(member).init({"params": jax.random.key(0)}, jnp.zeros((1, 32, 32, 3)), activation=0)["params"]
    assert jax.tree.map(np.shape, own) == jax.tree.map(np.shape, jax.device_get(alone))
    jax.tree.map(np.testing.assert_array_equal, embed(own, member, program, params), params)


def _population(n, epochs=4, train=1600):
    members = sample_members(n, 0, datasets=["fashion_mnist"])
    return members, [epochs * (train // m.batch_size) for m in members]


def test_full_space_population_compiles_at_most_eight_programs():
    members, steps = _population(256)
    assert len({(*m.architecture, m.batch_size) for m in members}) > 200  # nearly one shape per member
    for policy, cost in (("all", CostModel.for_backend("cpu")), ("auto", CostModel.for_backend("gpu"))):
        programs = plan_programs(members, {"fashion_mnist": 10}, steps, policy, cost=cost)
        assert len(programs) <= 8, policy
        assert sorted(i for p in programs for i in p.members) == list(range(256))
        for program in programs:
            archs = [Architecture.of(members[i], 10) for i in program.members]
            assert program.arch == program_architecture(archs)
            assert len({members[i].batch_size for i in program.members}) == 1


def test_auto_weighs_compiles_against_padded_flops():
    members, short = _population(64, epochs=4)
    cpu = CostModel.for_backend("cpu")
    plan = lambda policy, steps, cost=cpu: plan_programs(members, {"fashion_mnist": 10}, steps, policy, cost=cost)  # noqa: E731
    exact = plan("none", short)
    assert all(not p.padded for p in exact) and len(exact) == len({(*m.architecture, m.batch_size) for m in members})
    auto = plan("auto", short)
    assert len(plan("all", short)) < len(auto) < len(exact)  # a short CPU run: some padding pays

    def estimate(programs, steps):
        computed = sum(steps[i] * train_flops(p.arch, members[i].batch_size) for p in programs for i in p.members)
        return len(programs) * cpu.compile_seconds + computed / cpu.flops_per_second

    for policy in ("all", "none"):
        assert estimate(auto, short) <= estimate(plan(policy, short), short)
    long = [s * 1000 for s in short]  # a long CPU run: compute dominates, (nearly) exact shapes
    useful = sum(s * train_flops(Architecture.of(m, 10), m.batch_size) for s, m in zip(long, members))
    long_auto = plan("auto", long)
    computed = sum(long[i] * train_flops(p.arch, members[i].batch_size) for p in long_auto for i in p.members)
    assert len(long_auto) > len(auto) and useful / computed > 0.99


def test_bad_policy_is_a_config_error():
    members, steps = _population(2)
    with pytest.raises(ConfigError, match="pad_architectures='some'"):
        plan_programs(members, {"fashion_mnist": 10}, steps, "some", cost=CostModel.for_backend("cpu"))
