"""The NWS hyper-parameter space: the 13 properties, their options, sampling and pinning.

A *member* is one network of a population. Its configuration, :class:`MemberConfig`,
holds one value per property under the reference's column names, plus its seed.
Categorical values are stored as option names (``"adam"``, ``"relu"``) or option
values (``filter_size=5``); :func:`option_index` gives the index in the reference
table, which is what the NWS CSVs store for optimizer, activation and initialization.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from nwsjax.errors import ConfigError

__all__ = [
    "PROPERTIES",
    "PROPERTY_NAMES",
    "CATEGORICAL",
    "REFERENCE_DATASETS",
    "LRATE_RANGE",
    "MAX_MEMBERS",
    "FIXED_ARCHITECTURE",
    "Property",
    "MemberConfig",
    "option_index",
    "parse_pins",
    "sample_members",
    "unchecked",
]


@dataclasses.dataclass(frozen=True)
class Property:
    """One sampled property.

    Attributes:
      name: column name of the reference (``"optimizer"``).
      options: the options in the reference table's order, so an option's index is
        its position here. Empty for the continuous learning rate.
      sampled: the options drawn when nothing is pinned (a subset of ``options``).
    """

    name: str
    options: tuple[Any, ...]
    sampled: tuple[Any, ...]


REFERENCE_DATASETS = ("mnist", "cifar10", "svhn", "stl10", "fashion_mnist")
LRATE_RANGE = (0.0002, 0.005)
MAX_MEMBERS = 1_000_000  # one run's population; the reference study trained 16,000 networks


def _categorical(name: str, options: tuple, sampled: tuple | None = None) -> Property:
    return Property(name, options, options if sampled is None else sampled)


PROPERTIES: dict[str, Property] = {
    p.name: p
    for p in (
        _categorical("dataset", REFERENCE_DATASETS),
        Property("lrate", (), ()),
        _categorical("batch_size", (32, 64, 128, 256)),
        # The released generator always turned batch norm on; "off" can be pinned.
        _categorical("batch_norm", ("off", "on"), ("on",)),
        _categorical("augmentation", ("off", "on")),
        _categorical("optimizer", ("adam", "rmsprop", "momentum")),
        _categorical("activation", ("relu", "elu", "sigmoid", "tanh")),
        _categorical("initialization", ("constant", "normal", "glorot_uniform", "glorot_normal")),
        _categorical("filter_size", (3, 5, 7)),
        _categorical("depth_conv", (3, 4, 5)),
        _categorical("depth_fc", (2, 3, 4)),
        _categorical("width_conv", (4, 8, 12)),
        _categorical("width_fc", (64, 128, 192)),
    )
}
PROPERTY_NAMES: tuple[str, ...] = tuple(PROPERTIES)
CATEGORICAL: tuple[str, ...] = tuple(n for n in PROPERTY_NAMES if n != "lrate")
ARCHITECTURE_PROPERTIES = ("filter_size", "depth_conv", "depth_fc", "width_conv", "width_fc")
FIXED_ARCHITECTURE: dict[str, int] = {
    "filter_size": 5,
    "depth_conv": 3,
    "depth_fc": 2,
    "width_conv": 8,
    "width_fc": 128,
}


@dataclasses.dataclass(frozen=True)
class MemberConfig:
    """Everything that defines how one member is built and trained.

    ``dataset`` is a dataset name as understood by :func:`nwsjax.data.load_dataset`
    (a reference name, ``"digits"``, or the name bound to an IDX folder).
    """

    dataset: str
    lrate: float
    batch_size: int
    batch_norm: str
    augmentation: str
    optimizer: str
    activation: str
    initialization: str
    filter_size: int
    depth_conv: int
    depth_fc: int
    width_conv: int
    width_fc: int
    seed: int

    def __post_init__(self):
        for name in CATEGORICAL:
            if name == "dataset":
                continue
            value = getattr(self, name)
            options = PROPERTIES[name].options
            if value not in options or isinstance(value, bool):
                raise ConfigError(
                    f"{name}={value!r} is not an option; choose one of {_show(options)}"
                )
        if not isinstance(self.dataset, str) or not self.dataset:
            raise ConfigError(f"dataset={self.dataset!r} must be a non-empty dataset name")
        _check_lrate(self.lrate)
        if not (isinstance(self.seed, (int, np.integer)) and 0 <= self.seed < 2**31):
            raise ConfigError(f"seed={self.seed!r} must be an integer in [0, 2**31)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def architecture(self) -> tuple[int, int, int, int, int]:
        """(filter_size, depth_conv, depth_fc, width_conv, width_fc)."""
        return tuple(getattr(self, n) for n in ARCHITECTURE_PROPERTIES)


def _show(options: Sequence) -> str:
    return ", ".join(f"{o} ({i})" for i, o in enumerate(options))


def _check_lrate(lrate: float) -> None:
    low, high = LRATE_RANGE
    if not (isinstance(lrate, (float, int, np.floating)) and math.isfinite(lrate)):
        raise ConfigError(f"lrate={lrate!r} must be a finite number in [{low}, {high}]")
    if not low <= lrate <= high:
        raise ConfigError(
            f"lrate={lrate} is outside the NWS range [{low}, {high}]; pick a value inside it"
        )


def option_index(name: str, value: Any) -> int:
    """Index of ``value`` among the reference options of property ``name``."""
    return PROPERTIES[name].options.index(value)


def _parse_value(name: str, value: Any) -> Any:
    """Turns one pinned value (text as typed after ``--set``, or a value) into the stored value."""
    text = str(value).strip()
    if name == "lrate":
        try:
            lrate = float(text)
        except ValueError:
            raise ConfigError(f"--set lrate={text}: not a number; e.g. --set lrate=0.001") from None
        _check_lrate(lrate)
        return lrate
    if name == "dataset":
        if not text:
            raise ConfigError("--set dataset= needs a dataset name, e.g. --set dataset=digits")
        if text.isdigit():
            index = int(text)
            if index >= len(REFERENCE_DATASETS):
                raise ConfigError(
                    f"--set dataset={text}: index out of range; choose {_show(REFERENCE_DATASETS)}"
                )
            return REFERENCE_DATASETS[index]
        return text
    options = PROPERTIES[name].options
    for option in options:
        if text.lower() == str(option).lower():
            return option
    if text.isdigit() and int(text) < len(options):
        # Numeric options (batch size, widths) match by value first, then by index.
        return options[int(text)]
    raise ConfigError(f"--set {name}={text}: unknown option; choose one of {_show(options)}")


def parse_pins(items: Sequence[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Parses pinned properties.

    Args:
      items: ``["optimizer=adam", "augmentation=0"]`` as typed after ``--set``, or a
        mapping ``{"optimizer": "adam"}``. Values are an option's name, its value or
        its index in the reference table; ``lrate`` takes a number.

    Returns:
      ``{property: value}`` with values as stored in :class:`MemberConfig`.
    """
    pairs = items.items() if isinstance(items, Mapping) else [_split_pin(s) for s in items]
    pins: dict[str, Any] = {}
    for name, value in pairs:
        if name not in PROPERTIES:
            raise ConfigError(
                f"--set {name}=...: unknown property; choose one of {', '.join(PROPERTY_NAMES)}"
            )
        pins[name] = _parse_value(name, value)
    return pins


def _split_pin(item: str) -> tuple[str, str]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected name=value, e.g. --set optimizer=adam")
    name, value = item.split("=", 1)
    return name.strip(), value


def member_seeds(seed: int, count: int) -> list[int]:
    """``count`` independent 31-bit member seeds derived from a run seed."""
    children = np.random.SeedSequence(seed).spawn(count)
    return [int(c.generate_state(1)[0] & 0x7FFFFFFF) for c in children]


def sample_members(
    count: int,
    seed: int,
    *,
    datasets: Sequence[str] = ("digits",),
    pins: Mapping[str, Any] | None = None,
    fixed_architecture: bool = False,
) -> list[MemberConfig]:
    """Samples ``count`` member configurations uniformly from the NWS space.

    Args:
      count: number of members (>= 1).
      seed: run seed; the same seed gives the same members.
      datasets: dataset names drawn uniformly for the ``dataset`` property.
      pins: properties held at one value (see :func:`parse_pins`); they override
        ``datasets`` and the fixed-architecture preset.
      fixed_architecture: pin the architecture of nws_fixed (filter 5, 3 conv, 2 FC,
        conv width 8, FC width 128).

    Returns:
      ``count`` configurations; member ``i`` has its own seed.
    """
    if count < 1:
        raise ConfigError(f"members={count}: need at least 1 member")
    if count > MAX_MEMBERS:
        raise ConfigError(f"members={count}: at most {MAX_MEMBERS:,} per run; split the study into several zoos")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"--seed {seed}: must be an integer >= 0, e.g. --seed 0")
    if not datasets:
        raise ConfigError("no dataset given; pass at least one, e.g. --dataset digits")
    fixed = dict(FIXED_ARCHITECTURE) if fixed_architecture else {}
    fixed.update(parse_pins(dict(pins or {})))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x4E5753]))
    seeds = member_seeds(seed, count)
    members = []
    for i in range(count):
        values: dict[str, Any] = {}
        for name, prop in PROPERTIES.items():
            # Every property is drawn, pinned or not, so pinning one property does
            # not change the values drawn for the others.
            if name == "lrate":
                drawn = float(rng.uniform(*LRATE_RANGE))
            elif name == "dataset":
                drawn = datasets[int(rng.integers(len(datasets)))]
            else:
                drawn = prop.sampled[int(rng.integers(len(prop.sampled)))]
            values[name] = fixed.get(name, drawn)
        members.append(MemberConfig(**values, seed=seeds[i]))
    return members


def unchecked(member: MemberConfig, **values: Any) -> MemberConfig:
    """A copy of ``member`` with ``values`` set WITHOUT validation.

    For stress tests, e.g. a learning rate far outside the NWS range that makes a
    member diverge (``unchecked(member, lrate=1e4)``). Everything else validates.
    """
    copy = dataclasses.replace(member)
    for name, value in values.items():
        if name not in MemberConfig.__dataclass_fields__:
            raise ConfigError(f"{name}: not a member field")
        object.__setattr__(copy, name, value)
    return copy
