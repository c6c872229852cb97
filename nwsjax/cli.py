"""Shared plumbing of the command-line entry points: one-line errors and exit code 2."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from nwsjax.errors import NWSError

__all__ = ["ArgumentParser", "main_wrapper", "enable_compilation_cache", "exit_process"]

USAGE_ERROR = 2


class ArgumentParser(argparse.ArgumentParser):
    """argparse with a one-line error (no usage dump) and exit code 2."""

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"error: {message} (see {self.prog} --help)\n")


def main_wrapper(main: Callable[[Sequence[str] | None], int]) -> Callable[[Sequence[str] | None], int]:
    """Runs ``main``; an NWSError becomes ``error: <message>`` on stderr and exit code 2."""

    def wrapped(argv: Sequence[str] | None = None) -> int:
        try:
            return main(argv)
        except NWSError as err:
            print(f"error: {err}", file=sys.stderr)
            return USAGE_ERROR
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130

    return wrapped


def enable_compilation_cache(path: str | None = None) -> None:
    """Turns on JAX's persistent compilation cache (repeat runs skip compiling)."""
    import jax

    path = path or os.environ.get("NWSJAX_COMPILE_CACHE") or os.path.expanduser("~/.cache/nwsjax/xla")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def exit_process(code: int) -> None:
    """Ends the process with ``code``; after an error, at once.

    An error can stop a run while Orbax's background writers are still alive (a full
    disk): at a normal interpreter shutdown they print tracebacks of their own after the
    one-line error. Everything the run committed is on disk by then, so an error exit
    flushes the output and leaves without that shutdown.
    """
    if code == 0:
        sys.exit(0)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
