"""Interrupted and multi-process runs, through the real CLI: the zoo always comes out whole.

Every run here is a subprocess of ``experiments/population.py`` training the same
small population (6 members of one cohort, 2 at a time, 2 members per committed part),
so all of them run one compiled program, shared through a persistent compilation cache.

* ``kill -9`` at three points (members training, a part's rows written but not its
  checkpoint, a checkpoint write in flight) then ``--resume``: the zoo equals the
  uninterrupted run's bitwise, every member exactly once, and the killed zoo is never
  readable through ``open_zoo`` meanwhile.
* two processes under ``jax.distributed`` on loopback write one zoo, equal bitwise to
  the one-process run (each member's computation is the same program either way).
"""

import os
import signal
import socket
import subprocess
import sys

import pytest

from cli_runs import ROOT, assert_same_zoo, committed_members, finish, wait_for
from cli_runs import population as run_cli
from nwsjax.errors import ZooError
from nwsjax.zoo import open_zoo

pytestmark = pytest.mark.slow

MEMBERS = 6
ARGS = [
    "--members", str(MEMBERS), "--dataset", "digits", "--max-images", "200", "--epochs", "2", "--min-epochs", "2",
    "--snapshots", "3", "--seed", "3", "--max-slots", "2", "--members-per-part", "2", "--quiet",
    "--set", "filter_size=3,depth_conv=3,depth_fc=2,width_conv=4,width_fc=64,batch_norm=off,batch_size=32",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    caches = tmp_path_factory.mktemp("caches")
    return dict(
        os.environ,
        NWSJAX_COMPILE_CACHE=str(caches / "xla"),
        NWSJAX_CACHE=str(caches / "data"),
        JAX_PLATFORMS="cpu",
    )


def population(out, *extra, env, fault=None, **popen):
    return run_cli(out, *extra, env=env, args=ARGS, fault=fault, **popen)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, env):
    out = tmp_path_factory.mktemp("whole") / "zoo"
    rc, _, err = finish(population(out, env=env))
    assert rc == 0, err
    return open_zoo(out)


def kill_when(condition):
    def start(out, env):
        process = population(out, env=env)
        assert wait_for(condition(out), process), "the run ended before the kill point"
        process.send_signal(signal.SIGKILL)
        return process

    return start


KILLS = {
    # members mid-training, one part committed (random moments: tests/test_kill_anywhere.py)
    "training": kill_when(lambda out: lambda: any(p.is_dir() for p in out.glob("snapshots/*/part-00000"))),
    # a part's rows written, its checkpoint not started
    "rows-written": lambda out, env: population(out, env=env, fault="part-rows-written:2:kill"),
    # the second part's checkpoint write in flight (Orbax writes asynchronously)
    "checkpoint-writing": lambda out, env: population(out, env=env, fault="part-save-started:2:kill"),
}


@pytest.mark.parametrize("point", list(KILLS))
def test_kill_and_resume_gives_the_uninterrupted_zoo(point, uninterrupted, tmp_path, env):
    out = tmp_path / "zoo"
    rc, _, err = finish(KILLS[point](out, env))
    assert rc == -signal.SIGKILL, f"the run was not killed (rc {rc}): {err[-2000:]}"
    with pytest.raises(ZooError, match="--resume"):
        open_zoo(out)  # a killed zoo is never presented as a zoo
    before = committed_members(out)
    assert len(before) == len(set(before)) < MEMBERS

    rc, _, err = finish(population(out, "--resume", env=env))
    assert rc == 0, err
    zoo = open_zoo(out)
    assert sorted(committed_members(out)) == list(range(MEMBERS))  # none lost, none twice
    assert zoo.info["resumed"] is True
    assert not (out / "work").exists()
    assert_same_zoo(zoo, uninterrupted)


def test_resume_refuses_what_it_cannot_continue(uninterrupted, tmp_path, env):
    """A complete zoo, or settings that differ from the stored ones: exit 2, one line, nothing touched."""
    import json
    import shutil

    def resume(out, *extra):
        return subprocess.run(
            [sys.executable, str(ROOT / "experiments" / "population.py"), "--resume", "--out", str(out), *extra],
            env=env, capture_output=True, text=True, cwd=ROOT, timeout=300,
        )

    done = resume(uninterrupted.path)
    assert done.returncode == 2 and "nothing to resume" in done.stderr and "Traceback" not in done.stderr
    out = tmp_path / "zoo"  # an interrupted run: a copy of the zoo marked running
    shutil.copytree(uninterrupted.path, out)
    info = json.loads((out / "zoo.json").read_text())
    (out / "zoo.json").write_text(json.dumps(dict(info, status="running")))
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    changed = resume(out, "--members", "7")
    assert changed.returncode == 2, changed.stderr
    assert changed.stderr.strip().count("\n") == 0 and "--members 7 differs" in changed.stderr
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_write_the_one_process_zoo(uninterrupted, tmp_path, env):
    out = tmp_path / "zoo"
    address = f"127.0.0.1:{free_port()}"
    processes = [
        population(out, "--coordinator", address, "--num-processes", "2", "--process-id", str(i), env=env)
        for i in range(2)
    ]
    results = [finish(p) for p in processes]
    for rc, _, err in results:
        assert rc == 0, err[-3000:]
    zoo = open_zoo(out)
    assert zoo.info["processes"] == 2
    writers = {p.name.split(".")[1] for p in out.glob("snapshots/*/part-*.rows-*.json")}
    assert writers == {"rows-0", "rows-1"}  # both processes wrote rows into the collective parts
    assert sorted(committed_members(out)) == list(range(MEMBERS))
    assert_same_zoo(zoo, uninterrupted)
