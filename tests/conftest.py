"""Shared fixtures: a tiny real dataset and a helper that trains a population into a zoo."""

import dataclasses

import pytest

from nwsjax.data import load_dataset, subset
from nwsjax.population import TrainConfig, train_population
from nwsjax.stopping import StoppingConfig
from nwsjax.zoo import ZooWriter, open_zoo

# The smallest architecture of the NWS family: real code paths, cheap compiles.
TINY = dict(filter_size=3, depth_conv=3, depth_fc=2, width_conv=4, width_fc=64)


@pytest.fixture(scope="session")
def digits(tmp_path_factory):
    """scikit-learn's digits, prepared as the reference describes (1250/144/359 images)."""
    return load_dataset("digits", cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def small_digits(digits):
    """digits cut to 600 images per split (class-balanced)."""
    return subset(digits, 600)


def train_zoo(path, members, datasets, *, epochs, snapshots=3, **train):
    """Trains ``members`` for exactly ``epochs`` epochs into a zoo at ``path``; returns it opened."""
    config = TrainConfig(stopping=StoppingConfig(max_epochs=epochs, min_epochs=epochs), snapshots=snapshots, **train)
    writer = ZooWriter(path, {"train": dataclasses.asdict(config)})
    report = train_population(members, datasets, writer, config)
    writer.wait()
    writer.close(seconds=report.seconds)
    return open_zoo(path), report
