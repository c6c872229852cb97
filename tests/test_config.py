"""RunConfig nests TrainConfig: built from the command line's names, saved whole, read back."""

from __future__ import annotations

import dataclasses
import json

import pytest

from nwsjax.errors import ConfigError
from nwsjax.population import TrainConfig
from nwsjax.run import RunConfig, flat_value, run_config
from nwsjax.stopping import StoppingConfig


def test_flat_names_land_in_the_nested_config_and_survive_zoo_json():
    config = run_config(out="z", members=3, datasets=["digits"], epochs=4, min_epochs=2, snapshots=5,
                        strategy="vmap+im2col", max_slots=8, pad_architectures="all", devices=2)
    assert config.train == TrainConfig(stopping=StoppingConfig(max_epochs=4, min_epochs=2), snapshots=5,
                                       strategy="vmap+im2col", max_slots=8, pad_architectures="all", devices=2)
    assert config.datasets == ("digits",) and flat_value(config, "epochs") == 4 and flat_value(config, "members") == 3
    stored = json.loads(json.dumps(dataclasses.asdict(config)))  # what zoo.json holds as config.run
    assert RunConfig.from_record(stored) == config
    assert run_config().train.stopping.max_epochs == 15  # the run's default, not the library's 1000


def test_records_of_older_zoos_are_read():
    flat = dict(out="z", members=3, datasets=["digits"], seed=1, epochs=4, min_epochs=20, snapshots=5,
                fixed_architecture=True, pins=["batch_size=64"], max_images=300, strategy="auto", max_slots=256,
                pad_architectures="auto", devices=2, cache_dir=None, overwrite=False, resume=False, members_per_part=16)
    config = RunConfig.from_record(flat)
    assert config.train.stopping == StoppingConfig(max_epochs=4, min_epochs=20) and config.train.devices == 2
    assert config.pins == ("batch_size=64",) and config.fixed_architecture
    old_train = {"stopping": {"max_epochs": 3, "min_epochs": 3}, "snapshots": 2,
                 "strategy": {"batching": "chunked", "conv": "im2col", "chunk": 4}}
    assert TrainConfig.from_record(old_train).strategy == "chunked4+im2col"
    assert TrainConfig.from_record({**old_train, "strategy": None}).strategy == "auto"


def test_bad_settings_fail_where_the_config_is_made():
    with pytest.raises(ConfigError, match="--members 0"):
        run_config(members=0)
    with pytest.raises(ConfigError, match="teleport"):
        run_config(strategy="teleport")
    with pytest.raises(ConfigError, match="epochs=0"):
        run_config(epochs=0)
    with pytest.raises(ConfigError, match="contradict"):
        run_config(resume=True, overwrite=True)
    with pytest.raises(TypeError, match="unknown settings colour"):
        run_config(colour="red")
