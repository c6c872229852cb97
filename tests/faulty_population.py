"""``experiments/population.py`` with a fault injected into its zoo writer, for the interruption tests.

    python tests/faulty_population.py --fault POINT:N:ACTION [population.py arguments]

At the N-th time the writer reaches POINT (see :class:`nwsjax.zoo.ZooWriter`'s
``fault``), ACTION happens there: ``kill`` sends this process SIGKILL, exactly as
``kill -9`` would; ``enospc`` raises ``OSError(ENOSPC)``, as a full disk would;
``fill`` fills the file system of ``--out`` with a file ``filler`` beside it, so the
run's next real writes fail. The production code reads no environment variable for
this: the callback is passed in.
"""

from __future__ import annotations

import errno
import functools
import importlib.util
import os
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def fill(folder: Path) -> None:
    """Writes ``folder/filler`` until the file system is full."""
    chunk = b"\0" * (1 << 16)
    with open(folder / "filler", "wb", buffering=0) as f:
        try:
            while True:
                f.write(chunk)
        except OSError as err:
            if err.errno != errno.ENOSPC:
                raise


def make_fault(spec: str, out: Path):
    """``"part-save-started:2:kill"`` -> a ``fault(point)`` callback."""
    point, count, action = spec.split(":")
    seen = {"n": 0}

    def fault(name: str) -> None:
        if name != point:
            return
        seen["n"] += 1
        if seen["n"] != int(count):
            return
        if action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif action == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        elif action == "fill":
            fill(out.absolute().parent)
        else:
            raise ValueError(f"unknown fault action {action!r}")

    return fault


def main(argv: list[str]) -> int:
    index = argv.index("--fault")
    spec = argv[index + 1]
    argv = argv[:index] + argv[index + 2 :]
    loaded = importlib.util.spec_from_file_location("population_cli", ROOT / "experiments" / "population.py")
    cli = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(cli)
    out = Path(argv[argv.index("--out") + 1])
    cli.run_population = functools.partial(cli.run_population, fault=make_fault(spec, out))
    return cli.main_wrapper(cli.main)(argv)


if __name__ == "__main__":
    from nwsjax.cli import exit_process

    exit_process(main(sys.argv[1:]))
