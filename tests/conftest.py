"""Shared fixtures: a tiny real dataset and a helper that trains a population into a zoo."""

import atexit
import dataclasses
import os
import shutil
import tempfile

# Many tests (and the CLIs and notebooks they start as processes) compile the same XLA
# programs; compiling dominates the suite's time on CPU. One persistent compilation cache
# for the session (fresh, so every run starts cold, as on CI), inherited by the xdist
# workers and child processes (the CLIs read NWSJAX_COMPILE_CACHE), compiles each program
# once. Set before anything imports jax. The same HLO gives the same executable.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="nwsjax-tests-xla-")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
    os.environ.update(
        JAX_COMPILATION_CACHE_DIR=_cache,
        NWSJAX_COMPILE_CACHE=_cache,
        JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
        JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    )

# The imports below must follow the cache settings.
# ruff: noqa: E402
import jax
import numpy as np
import pytest

from nwsjax.data import load_dataset, subset
from nwsjax.population import TrainConfig, train_population
from nwsjax.space import sample_members
from nwsjax.stopping import StoppingConfig
from nwsjax.zoo import ZooWriter, open_zoo

# The smallest architecture of the NWS family: real code paths, cheap compiles.
TINY = dict(filter_size=3, depth_conv=3, depth_fc=2, width_conv=4, width_fc=64)

# Epochs of the exactness tests (population against the single-model reference).
EPOCHS = 2


def base_member(**changes):
    """The exactness tests' base member: TINY, digits, Adam, ReLU, no augmentation or batch norm."""
    pins = dict(TINY, batch_size=128, optimizer="adam", activation="relu", initialization="glorot_uniform",
                augmentation="off", batch_norm="off")
    pins.update(changes)
    return sample_members(1, seed=11, datasets=["digits"], pins=pins)[0]


def leaves(tree):
    """All leaves of a parameter tree as one flat vector."""
    return np.concatenate([np.ravel(np.asarray(x)) for x in jax.tree.leaves(tree)])


def assert_weights_match(got, want, lrate: float) -> None:
    """Trained weights equal to float32 tolerance, allowing Adam's rounding-noise steps.

    Adam divides a gradient by its own running magnitude, so a weight whose true gradient
    is below float32 rounding takes steps of about ``lrate`` in a direction set by the
    rounding of its program. At most one weight in 10,000 may differ that way, by less
    than ``lrate``; every other weight matches to rtol 1e-5, atol 2e-5.
    """
    got, want = leaves(got), leaves(want)
    off = ~np.isclose(got, want, rtol=1e-5, atol=2e-5)
    assert off.mean() <= 1e-4, f"{off.sum()} of {off.size} weights differ beyond float32 tolerance"
    assert np.abs(got - want).max() < lrate, f"a weight differs by {np.abs(got - want).max():.3g} >= lr {lrate:.3g}"


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


# Test files by decreasing run time: with two workers (pytest-xdist, one file at a time)
# the longest files start first, so neither worker is left alone with one at the end.
LONGEST_FIRST = ("test_kill_anywhere.py", "test_population.py", "test_padding.py", "test_strategies.py",
                 "test_meta.py", "test_reliability.py", "test_zoo.py", "test_released_layout.py", "test_notebooks.py",
                 "test_cli.py", "test_model.py", "test_bad_input.py", "test_meta_cli.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within a file kept
