"""The NWS hyper-parameter space: options, sampling, pinning, validation."""

import dataclasses

import pytest

from nwsjax.errors import ConfigError
from nwsjax.space import (
    FIXED_ARCHITECTURE,
    PROPERTIES,
    PROPERTY_NAMES,
    MemberConfig,
    option_index,
    parse_pins,
    sample_members,
)


def test_properties_are_the_reference_columns_with_their_options():
    assert PROPERTY_NAMES == (
        "dataset", "lrate", "batch_size", "batch_norm", "augmentation", "optimizer", "activation",
        "initialization", "filter_size", "depth_conv", "depth_fc", "width_conv", "width_fc",
    )
    assert PROPERTIES["dataset"].options == ("mnist", "cifar10", "svhn", "stl10", "fashion_mnist")
    assert PROPERTIES["optimizer"].options == ("adam", "rmsprop", "momentum")
    assert PROPERTIES["activation"].options == ("relu", "elu", "sigmoid", "tanh")
    assert PROPERTIES["initialization"].options == ("constant", "normal", "glorot_uniform", "glorot_normal")
    assert PROPERTIES["batch_size"].options == (32, 64, 128, 256)
    assert PROPERTIES["filter_size"].options == (3, 5, 7)
    assert PROPERTIES["depth_conv"].options == (3, 4, 5)
    assert PROPERTIES["depth_fc"].options == (2, 3, 4)
    assert PROPERTIES["width_conv"].options == (4, 8, 12)
    assert PROPERTIES["width_fc"].options == (64, 128, 192)
    assert PROPERTIES["augmentation"].options == ("off", "on")
    assert PROPERTIES["batch_norm"].sampled == ("on",)  # always on in the released generator


def test_sampling_is_seeded_uniform_and_in_range():
    a = sample_members(400, seed=1, datasets=["digits", "fashion_mnist"])
    assert a == sample_members(400, seed=1, datasets=["digits", "fashion_mnist"])
    assert a != sample_members(400, seed=2, datasets=["digits", "fashion_mnist"])
    assert len({m.seed for m in a}) == 400
    for name in ("optimizer", "activation", "initialization", "batch_size", "filter_size", "augmentation"):
        seen = {getattr(m, name) for m in a}
        assert seen == set(PROPERTIES[name].options), name
    assert {m.batch_norm for m in a} == {"on"}
    assert all(0.0002 <= m.lrate <= 0.005 for m in a)
    assert {m.dataset for m in a} == {"digits", "fashion_mnist"}
    counts = [sum(m.optimizer == o for m in a) for o in PROPERTIES["optimizer"].options]
    assert min(counts) > 100  # roughly uniform (expected 133 each)


def test_fixed_architecture_preset_and_pins():
    members = sample_members(50, seed=0, fixed_architecture=True, pins=parse_pins(["optimizer=adam", "augmentation=0"]))
    for m in members:
        assert {k: getattr(m, k) for k in FIXED_ARCHITECTURE} == FIXED_ARCHITECTURE
        assert m.optimizer == "adam" and m.augmentation == "off"
    # Pinning one property leaves every other draw unchanged.
    free = sample_members(50, seed=0, fixed_architecture=True)
    assert [dataclasses.replace(m, optimizer="adam", augmentation="off") for m in free] == members


@pytest.mark.parametrize(
    "text, expected",
    [
        ("optimizer=adam", ("optimizer", "adam")),
        ("optimizer=2", ("optimizer", "momentum")),
        ("activation=TanH", ("activation", "tanh")),
        ("augmentation=on", ("augmentation", "on")),
        ("augmentation=0", ("augmentation", "off")),
        ("batch_size=128", ("batch_size", 128)),
        ("batch_size=1", ("batch_size", 64)),  # not a batch size: an index
        ("lrate=0.001", ("lrate", 0.001)),
        ("dataset=4", ("dataset", "fashion_mnist")),
        ("dataset=digits", ("dataset", "digits")),
    ],
)
def test_pins_take_names_values_and_indices(text, expected):
    assert parse_pins([text]) == dict([expected])
    name, value = expected
    if name not in ("lrate", "dataset"):
        assert PROPERTIES[name].options[option_index(name, value)] == value


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("optimizer=adagrad", "choose one of adam (0), rmsprop (1), momentum (2)"),
        ("optimizer=7", "unknown option"),
        ("lrate=0.5", "outside the NWS range"),
        ("lrate=fast", "not a number"),
        ("colour=red", "unknown property"),
        ("optimizer", "expected name=value"),
        ("dataset=9", "index out of range"),
    ],
)
def test_bad_pins_are_one_line_errors(text, fragment):
    with pytest.raises(ConfigError) as err:
        parse_pins([text])
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_member_config_validates_where_it_enters():
    good = sample_members(1, seed=0)[0]
    with pytest.raises(ConfigError, match="activation='swish' is not an option"):
        dataclasses.replace(good, activation="swish")
    with pytest.raises(ConfigError, match="outside the NWS range"):
        dataclasses.replace(good, lrate=1.0)
    with pytest.raises(ConfigError, match="seed"):
        dataclasses.replace(good, seed=-1)
    with pytest.raises(ConfigError, match="at least 1 member"):
        sample_members(0, seed=0)
    assert isinstance(good, MemberConfig)
