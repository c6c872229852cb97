"""Zoo format: round trip, per-member epochs, slot refill, determinism, reader errors."""

import json

import numpy as np
import pandas as pd
import pytest

from conftest import TINY, train_zoo
from nwsjax.data import subset
from nwsjax.errors import ZooError
from nwsjax.layout import flatten
from nwsjax.space import PROPERTY_NAMES, sample_members
from nwsjax.zoo import open_zoo


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, digits):
    """Two datasets of different sizes in one cohort, fewer slots than members."""
    datasets = {"digits": subset(digits, 600), "tiny": subset(digits, 300)}
    datasets["tiny"] = type(digits)(**{**datasets["tiny"].__dict__, "name": "tiny"})
    members = sample_members(5, seed=3, datasets=["digits", "tiny"], pins=dict(TINY, batch_size=128, batch_norm="on"))
    path = tmp_path_factory.mktemp("mixed") / "zoo"
    zoo, report = train_zoo(path, members, datasets, epochs=2, snapshots=3, max_slots=2)
    return zoo, members, report, datasets


def test_members_table_has_every_property_and_the_run_facts(mixed):
    zoo, members, _, _ = mixed
    table = zoo.members
    assert list(table.index) == list(range(5))
    for name in PROPERTY_NAMES:
        assert [getattr(m, name) for m in members] == list(table[name]), name
    assert list(table.seed) == [m.seed for m in members]
    for column in ("weightn_conv", "weightn_fc", "epochs", "steps", "train_acc", "val_acc", "test_acc", "status"):
        assert column in table
    assert (table.weightn_conv + table.weightn_fc == [len(v) for v in zoo.flat(range(5))]).all()
    assert set(table.status) == {"finished"}


def test_epochs_are_per_member_when_datasets_differ(mixed):
    zoo, members, _, datasets = mixed
    for i, m in enumerate(members):
        steps_per_epoch = len(datasets[m.dataset].train_labels) // m.batch_size
        assert zoo.members.loc[i, "steps"] == 2 * steps_per_epoch
    assert len({zoo.members.loc[i, "steps"] for i in range(5)}) == 2
    curves = zoo.curves
    assert len(curves) == 5 * 2 and set(curves.columns) >= {"member", "epoch", "val_acc", "test_acc", "lrate"}


def test_slot_refill_trains_every_member_once(mixed):
    zoo, _, report, _ = mixed
    assert report.members == 5 and report.utilization == 1.0
    assert sorted(zoo.members.index) == list(range(5))


def test_flat_and_params_agree_and_snapshot_one_is_the_initialization(mixed):
    zoo, _, _, _ = mixed
    ids = [0, 1]
    params = zoo.params(ids, snapshot=2)
    stats = zoo.batch_stats(ids, snapshot=2)  # the released layout: moving statistics in the vector
    np.testing.assert_array_equal(flatten(params, zoo.architecture(0), stats), zoo.flat(ids, snapshot=2))
    assert not np.array_equal(zoo.flat(ids, snapshot=1), zoo.flat(ids, snapshot=3))
    stats = zoo.batch_stats(ids, snapshot=1)
    np.testing.assert_array_equal(stats["conv0_bn"]["var"], np.ones((2, 4)))  # untouched at initialization
    with pytest.raises(ZooError, match="snapshots 1..3"):
        zoo.flat(ids, snapshot=4)
    with pytest.raises(ZooError, match="unknown member ids"):
        zoo.flat([99])


def test_same_seed_same_zoo_bitwise(tmp_path, mixed):
    zoo, members, _, datasets = mixed
    again, _ = train_zoo(tmp_path / "again", members, datasets, epochs=2, snapshots=3, max_slots=2)
    for snapshot in (1, 2, 3):
        np.testing.assert_array_equal(np.stack(again.flat(range(5), snapshot=snapshot)),
                                      np.stack(zoo.flat(range(5), snapshot=snapshot)))
    pd.testing.assert_frame_equal(again.members, zoo.members)
    pd.testing.assert_frame_equal(again.curves, zoo.curves)


def test_open_zoo_rejects_what_is_not_a_complete_zoo(tmp_path, mixed):
    zoo, _, _, _ = mixed
    with pytest.raises(ZooError, match="no such folder"):
        open_zoo(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ZooError, match="not a zoo"):
        open_zoo(tmp_path / "empty")
    info = json.loads((zoo.path / "zoo.json").read_text())
    for change, fragment in [({"version": 99}, "version 99"), ({"status": "running"}, "has not finished"),
                             ({"format": "other"}, "is not 'nwsjax-zoo'")]:
        bad = tmp_path / f"bad{len(fragment)}"
        bad.mkdir()
        (bad / "zoo.json").write_text(json.dumps({**info, **change}))
        with pytest.raises(ZooError, match=fragment) as err:
            open_zoo(bad)
        assert "\n" not in str(err.value)
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "zoo.json").write_text("{not json")
    with pytest.raises(ZooError, match="corrupt"):
        open_zoo(tmp_path / "corrupt")


def test_population_larger_than_memory_trains_in_fewer_slots(tmp_path, mixed):
    """A budget below one cohort's measured footprint: fewer members at once, same results.

    All 5 members would fit in 5 slots; the budget leaves the fewest a looped strategy
    keeps (2, see ``_Cohort``), the width the ``mixed`` zoo trained at: same weights, bitwise.
    """
    zoo, members, _, datasets = mixed
    tight, report = train_zoo(tmp_path / "tight", members, datasets, epochs=2, snapshots=3, memory_budget=1.0)
    (label,) = report.slots
    assert report.slots[label] == 2 and report.footprint_bytes[label] > 0
    assert set(tight.members.status) == {"finished"} and len(tight.members) == 5
    for snapshot in (1, 3):
        np.testing.assert_array_equal(np.stack(tight.flat(range(5), snapshot=snapshot)),
                                      np.stack(zoo.flat(range(5), snapshot=snapshot)))


def test_the_head_is_twenty_wide_and_wider_for_more_classes(tmp_path, digits):
    """The output layer has the reference's 20 units for a 10-class dataset, one per class for a
    dataset of more classes; cohorts never mix output widths."""
    small = subset(digits, 300)
    relabel = lambda labels: (labels + 10 * (np.arange(len(labels)) % 3)).astype(labels.dtype)  # noqa: E731
    thirty = type(small)(**{**small.__dict__, "name": "thirty", "num_classes": 30,
                            "train_labels": relabel(small.train_labels), "val_labels": relabel(small.val_labels),
                            "test_labels": relabel(small.test_labels)})
    members = sample_members(2, seed=4, datasets=["digits", "thirty"], pins=dict(TINY, batch_size=128, batch_norm="off"))
    members = [members[0].__class__(**{**members[0].__dict__, "dataset": name}) for name in ("digits", "thirty")]
    zoo, report = train_zoo(tmp_path / "zoo", members, {"digits": small, "thirty": thirty}, epochs=1, snapshots=2)
    assert len(report.compile_seconds) == 2  # one architecture, two output widths: two cohorts
    for member, width in ((0, 20), (1, 30)):
        assert zoo.architecture(member).num_classes == width
        assert zoo.params([member])["out"]["kernel"].shape[-1] == width
    assert zoo.members.loc[1, "cohort"].endswith("-k30") and not zoo.members.loc[0, "cohort"].endswith("-k30")
