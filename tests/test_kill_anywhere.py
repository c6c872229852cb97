"""A run killed at any moment resumes to the same zoo; a full disk stops it cleanly.

* **Randomized kills.** ``population.py`` runs are killed with SIGKILL at seeded random
  moments, each drawn uniformly over the length of the uninterrupted run (startup,
  compiling, training, exports, Orbax writes, the final tables), then resumed with the
  same command plus ``--resume``, which is killed again at a fresh random moment, and
  so on until a resume finishes. Every zoo so resumed must equal the uninterrupted
  run's bitwise, with every member committed exactly once. A population of mixed
  architectures (several cohorts, one member per committed part, so kills land between
  many commits) takes most of the kills; a fixed-architecture one takes the rest.
* **A full disk** while snapshots are written: the run stops with one line that says
  how much space the rest needs (exit 2), keeps what it committed, and resumes to the
  uninterrupted zoo once there is space. Tested on a real size-limited tmpfs where this
  machine lets the tests mount one, and always with ``OSError(ENOSPC)`` injected at a
  snapshot write through the writer's fault callback.
* A second live writer of the same zoo is refused; a folder killed before its zoo.json
  existed starts over under ``--resume``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from cli_runs import assert_same_zoo, committed_members, finish, population
from nwsjax.errors import ZooError
from nwsjax.zoo import ZooWriter, lock_zoo, open_zoo, read_info

pytestmark = pytest.mark.slow

COMMON = ["--dataset", "digits", "--max-images", "200", "--epochs", "2", "--min-epochs", "2", "--snapshots", "3",
          "--max-slots", "2", "--members-per-part", "1", "--quiet"]
# Conv width sampled from 4/8/12: three architectures, three cohorts (seed 7 draws all three),
# at their own shapes, so the kills land between three programs' commits.
MIXED = ["--members", "6", "--seed", "7", *COMMON, "--pad-architectures", "none",
         "--set", "filter_size=3,depth_conv=3,depth_fc=2,width_fc=64,batch_norm=off,batch_size=32"]
# The same members padded into one program, two slots refilled as members finish.
PADDED = [*MIXED[: MIXED.index("--pad-architectures")], "--pad-architectures", "all",
          *MIXED[MIXED.index("--pad-architectures") + 2 :]]
FIXED = ["--members", "4", "--seed", "6", *COMMON,
         "--set", "filter_size=3,depth_conv=3,depth_fc=2,width_conv=4,width_fc=64,batch_norm=on,batch_size=32"]
KILLS = {"mixed": 7, "fixed": 3}  # kills that must land, per population


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    caches = tmp_path_factory.mktemp("caches")
    return dict(os.environ, NWSJAX_CACHE=str(caches / "data"), JAX_PLATFORMS="cpu")


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, env):
    """``{name: (zoo, seconds of the whole run)}`` for both populations.

    Each runs twice: the first fills the compilation cache, the second (which the
    kills are timed against) runs as the killed runs will, and must give the same zoo.
    """
    runs = {}
    for name, args in (("mixed", MIXED), ("fixed", FIXED)):
        zoos = []
        for attempt in range(2):
            out = tmp_path_factory.mktemp(f"{name}{attempt}") / "zoo"
            start = time.monotonic()
            rc, _, err = finish(population(out, env=env, args=args))
            assert rc == 0, err[-3000:]
            zoos.append(open_zoo(out))
            runs[name] = (zoos[-1], time.monotonic() - start)
        assert_same_zoo(zoos[1], zoos[0])  # same seed, same zoo
    assert runs["mixed"][0].members.cohort.nunique() == 3, "the mixed population must span several cohorts"
    return runs


def kill_chain(out, args, env, rng, length: float, kills_wanted: int) -> list[tuple[float, int]]:
    """Runs, kills at random moments and resumes until a run finishes; ``[(moment, members committed then)]``."""
    kills = []
    while True:
        process = population(out, *(["--resume"] if out.exists() else []), env=env, args=args)
        moment = rng.uniform(0, length) if len(kills) < kills_wanted else None
        try:
            process.wait(timeout=moment)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGKILL)
        rc, _, err = finish(process)
        if rc == 0:
            return kills
        assert rc == -signal.SIGKILL, f"run failed (rc {rc}) after {len(kills)} kills: {err[-3000:]}"
        kills.append((moment, len(committed_members(out)) if out.exists() else 0))
        if complete(out):
            return kills  # killed after the zoo was complete (printing its summary): nothing to resume


def complete(out) -> bool:
    try:
        return read_info(out)["status"] == "complete"
    except ZooError:
        return False


@pytest.mark.parametrize("name", list(KILLS))
def test_killed_at_random_moments_resumes_to_the_same_zoo(name, uninterrupted, tmp_path, env):
    reference, length = uninterrupted[name]
    args = MIXED if name == "mixed" else FIXED
    rng = np.random.default_rng(20261205 + len(name))
    landed, chain = [], 0
    while len(landed) < KILLS[name]:
        out = tmp_path / f"zoo{chain}"
        kills = kill_chain(out, args, env, rng, length, KILLS[name] - len(landed))
        zoo = open_zoo(out)
        assert sorted(committed_members(out)) == sorted(reference.members.index)  # none lost, none twice
        assert not (out / "work").exists() and not list(out.glob(".writer-*.lock"))
        assert_same_zoo(zoo, reference)
        landed += kills
        chain += 1
    print(f"{name}: {len(landed)} kills in {chain} chains, (seconds into the attempt, members committed): "
          f"{[(round(m, 2), c) for m, c in landed]}, of a {length:.1f} s run")
    members = len(reference.members)
    if name == "mixed":  # enough kills to require that some landed between commits
        assert any(0 < c < members for _, c in landed), "no kill landed mid-run: the moments do not cover the run"


def test_second_live_writer_is_refused(uninterrupted, tmp_path):
    out = tmp_path / "zoo"
    shutil.copytree(uninterrupted["fixed"][0].path, out)
    lock = lock_zoo(out)
    try:
        with pytest.raises(ZooError, match="another process is writing this zoo"):
            ZooWriter(out)
    finally:
        lock.release()


def test_padded_program_killed_between_commits_resumes_to_the_same_zoo(tmp_path, env):
    """Three architectures in one padded program: killed once its first two members are
    committed (the third one's rows written, its checkpoint not), then resumed."""
    whole = tmp_path / "whole"
    rc, _, err = finish(population(whole, env=env, args=PADDED))
    assert rc == 0, err[-3000:]
    assert list(read_info(whole)["programs"]) == ["pad-f3-c3-d2-w12-u64-nobn-b32"]
    out = tmp_path / "killed"
    rc, _, err = finish(population(out, env=env, args=PADDED, fault="part-rows-written:3:kill"))
    assert rc != 0 and len(committed_members(out)) == 2, err[-3000:]
    rc, _, err = finish(population(out, "--resume", env=env, args=PADDED))
    assert rc == 0, err[-3000:]
    assert_same_zoo(open_zoo(out), open_zoo(whole))


def test_resume_of_a_run_killed_before_its_zoo_existed_starts_over(uninterrupted, tmp_path, env):
    out = tmp_path / "zoo"
    out.mkdir()
    (out / ".writer-0.lock").touch()
    (out / "zoo.json.tmp").write_text('{"format": "nwsjax-zo')  # killed while writing zoo.json
    rc, _, err = finish(population(out, "--resume", env=env, args=FIXED))
    assert rc == 0, err[-3000:]
    assert_same_zoo(open_zoo(out), uninterrupted["fixed"][0])


def disk_full_then_resume(out, env, fault=None, orbax_noise=False):
    """A run that hits a full disk: exit 2, one line naming the space needed, committed parts kept.

    ``orbax_noise``: a real full disk fails Orbax's own writes, and under load its
    TensorStore worker threads sometimes print a traceback of an event loop already
    closed (Python's asyncio, no frame of ours) before the run's error line; tolerated
    there, never a traceback through nwsjax's code.
    """
    rc, _, err = finish(population(out, env=env, args=FIXED, fault=fault))
    assert rc == 2, err[-3000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("error: ") and "disk full" in line and " MB" in line and "--resume" in line, err
    if orbax_noise:
        assert "nwsjax" not in err.replace(str(out), "") and "experiments/" not in err, err
    else:
        assert "Traceback" not in err
    with pytest.raises(ZooError, match="--resume"):
        open_zoo(out)
    committed = committed_members(out)
    assert len(committed) == len(set(committed))
    return committed


def test_full_disk_injected_stops_cleanly_and_resumes(uninterrupted, tmp_path, env):
    out = tmp_path / "zoo"
    committed = disk_full_then_resume(out, env, fault="part-rows-written:3:enospc")
    assert len(committed) == 2  # the parts before the failing one stay committed
    rc, _, err = finish(population(out, "--resume", env=env, args=FIXED))
    assert rc == 0, err[-3000:]
    assert_same_zoo(open_zoo(out), uninterrupted["fixed"][0])


def test_full_disk_on_a_small_file_system(uninterrupted, tmp_path, env):
    """A real full disk: a size-limited tmpfs, filled up while the run writes its second part."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here ({made.stderr.decode().strip()[:80]}); "
                    "the injected full disk covers the same path")
    try:
        out = mount / "zoo"
        committed = disk_full_then_resume(out, env, fault="part-rows-written:2:fill", orbax_noise=True)
        assert len(committed) <= 1  # the first part's asynchronous write may be caught by the full disk too
        (mount / "filler").unlink()  # space is free again
        rc, _, err = finish(population(out, "--resume", env=env, args=FIXED))
        assert rc == 0, err[-3000:]
        assert_same_zoo(open_zoo(out), uninterrupted["fixed"][0])
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)
