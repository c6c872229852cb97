"""A diverging member is frozen and marked; every other member is bitwise unaffected."""

import dataclasses

import numpy as np

from conftest import TINY, train_zoo
from nwsjax.space import sample_members, unchecked


def test_diverging_member_leaves_the_others_bitwise_unchanged(tmp_path, small_digits):
    members = sample_members(4, seed=5, datasets=["digits"], pins=dict(TINY, batch_size=128, optimizer="momentum"))
    sane, _ = train_zoo(tmp_path / "sane", members, {"digits": small_digits}, epochs=2)
    broken = list(members)
    broken[1] = unchecked(members[1], lrate=1e12)  # through the library API, past validation
    zoo, _ = train_zoo(tmp_path / "broken", broken, {"digits": small_digits}, epochs=2)

    row = zoo.members.loc[1]
    assert row.status == "diverged" and "non-finite" in row.stop_reason
    assert row.steps < sane.members.loc[1, "steps"]
    for snapshot in range(1, zoo.num_snapshots + 1):
        vectors = zoo.flat([0, 1, 2, 3], snapshot=snapshot)
        assert np.isfinite(vectors[1]).all()  # its last finite weights are kept
        reference = sane.flat([0, 2, 3], snapshot=snapshot)
        np.testing.assert_array_equal(vectors[[0, 2, 3]], reference)
    np.testing.assert_array_equal(zoo.flat([1], snapshot=1), sane.flat([1], snapshot=1))  # same initialization
    others = [0, 2, 3]
    facts = ["epochs", "steps", "exports", "train_loss", "train_acc", "val_acc", "test_acc", "status"]
    # (Storage coordinates, part and row, differ: the diverged member finished first.)
    assert zoo.members.loc[others, facts].equals(sane.members.loc[others, facts])
    assert set(zoo.members.loc[others, "status"]) == {"finished"}
    assert dataclasses.asdict(broken[0]) == dataclasses.asdict(members[0])
