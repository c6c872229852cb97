"""Bad input, everywhere it enters: one line on stderr, exit code 2, no traceback, nothing touched.

Every case builds what it needs (IDX folders, copies of one small trained zoo, report
folders) inside its own folder, runs a real CLI (``experiments/population.py`` or
``experiments/meta.py``) there and checks:

* exit code 2;
* stderr is exactly one non-empty line, ``error: ...``, naming the offending thing;
* no traceback;
* the case folder is unchanged afterwards: every file byte-identical, no file or
  folder added or removed (an ``--out`` that did not exist still does not).

Most cases call the CLI's ``main`` in this process (a process per case would import
JAX again, 2-3 s each); the ones marked ``SUB`` run ``python experiments/...`` as a
subprocess, proving the process contract (exit status, stderr) end to end. In-process
population cases cannot start training: ``run_population`` is replaced by a guard that
fails the case if validation let the run through.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY, train_zoo
from nwsjax.data import subset
from nwsjax.run import run_config
from nwsjax.space import sample_members

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"population": ROOT / "experiments" / "population.py", "meta": ROOT / "experiments" / "meta.py"}
SUB = True  # run this case as a real subprocess


# --------------------------------------------------------------------------- #
# What the cases build
# --------------------------------------------------------------------------- #

IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file (magic 0000 08 <rank>)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def toy_arrays() -> dict[str, np.ndarray]:
    """40 train / 20 test 8x8 images of 10 classes."""
    rng = np.random.default_rng(0)
    return {
        "train_images": rng.integers(0, 256, (40, 8, 8), dtype=np.uint8),
        "train_labels": (np.arange(40) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (20, 8, 8), dtype=np.uint8),
        "test_labels": (np.arange(20) % 10).astype(np.uint8),
    }


def idx_folder(root: Path, skip: tuple[str, ...] = (), **payloads: bytes) -> Path:
    """``root/idx`` with the four IDX files of :func:`toy_arrays`; ``payloads`` replace files."""
    folder = root / "idx"
    folder.mkdir()
    for key, array in toy_arrays().items():
        if key not in skip:
            (folder / IDX_NAMES[key]).write_bytes(payloads.get(key, idx_bytes(array)))
    return folder


def copy_zoo(template: Path, root: Path, name: str = "zoo") -> Path:
    return Path(shutil.copytree(template, root / name))


def edit_info(zoo: Path, **changes) -> Path:
    info = json.loads((zoo / "zoo.json").read_text())
    (zoo / "zoo.json").write_text(json.dumps({**info, **changes}))
    return zoo


def interrupted(zoo: Path, *, by_cli: bool = True) -> Path:
    """Marks a zoo copy as a run that was killed; ``by_cli``: with the run settings population.py stores."""
    info = json.loads((zoo / "zoo.json").read_text())
    info["status"] = "running"
    if by_cli:
        run = run_config(out=str(zoo), members=6, epochs=1, snapshots=2, max_images=300,
                         pins=("batch_size=128",))
        info["config"]["run"] = dataclasses.asdict(run)
    (zoo / "zoo.json").write_text(json.dumps(info))
    return zoo


def notes_folder(root: Path, name: str) -> Path:
    """A folder of someone's unrelated files."""
    folder = root / name
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me\n")
    (folder / "data.csv").write_text("a,b\n1,2\n")
    return folder


def a_file(root: Path, name: str = "a-file") -> Path:
    path = root / name
    path.write_text("not a folder\n")
    return path


def a_report(root: Path) -> Path:
    """The report folder of an earlier meta run."""
    folder = root / "report"
    folder.mkdir()
    (folder / "results.json").write_text(json.dumps({"targets": {"lrate": {"models": {}}}, "seed": 7}))
    (folder / "summary.txt").write_text("earlier results\n")
    (folder / "confusion-optimizer-set.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(64)))
    return folder


# --------------------------------------------------------------------------- #
# The cases
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class Case:
    """One bad input.

    Attributes:
      id: the pytest id.
      cli: ``"population"`` or ``"meta"``.
      build: ``(root, zoo) -> argv``: makes what the case needs under ``root`` (its own
        folder) from the template ``zoo``, returns the CLI arguments.
      fragment: must appear in the error line; ``{root}`` is replaced by the case folder.
      in_subprocess: run ``python experiments/<cli>.py`` instead of ``main`` in-process.
    """

    id: str
    cli: str
    build: Callable[[Path, Path], list[str]]
    fragment: str
    in_subprocess: bool = False


def pop(id, build, fragment, in_subprocess=False):
    return Case(f"population: {id}", "population", build, fragment, in_subprocess)


def meta(id, build, fragment, in_subprocess=False):
    return Case(f"meta: {id}", "meta", build, fragment, in_subprocess)


def args(*argv):
    """A build that makes nothing."""
    return lambda root, zoo: list(argv)


def with_meta_zoo(change: Callable[[Path], object], *argv):
    """A build that copies the zoo, applies ``change`` to the copy, then runs meta on it."""

    def build(root, zoo):
        copy = copy_zoo(zoo, root)
        change(copy)
        return ["--zoo", str(copy), *argv]

    return build


def bad_zoo(change: Callable[[Path], object], *argv):
    """Meta on a changed copy of the zoo, target lrate."""
    return with_meta_zoo(change, "--target", "lrate", *argv)


def good_meta_zoo(*argv):
    return with_meta_zoo(lambda z: None, "--target", "lrate", *argv)


def _rm(relative):
    def change(zoo):
        target = zoo / relative
        shutil.rmtree(target) if target.is_dir() else target.unlink()

    return change


def _first_part(zoo: Path) -> Path:
    return sorted(zoo.glob("snapshots/*/part-*[0-9]"))[0]


def _rm_first_part(zoo):
    shutil.rmtree(_first_part(zoo))


TRUNCATED = idx_bytes(toy_arrays()["train_images"])[:-100]
BAD_MAGIC = b"\x12\x34" + idx_bytes(toy_arrays()["train_labels"])[2:]
FLAT_IMAGES = idx_bytes(toy_arrays()["train_images"].reshape(40, 64))  # 2-D: (n, 64) is no image
FEWER_LABELS = idx_bytes(toy_arrays()["test_labels"][:-1])
UNSEEN_LABEL = idx_bytes(np.where(np.arange(20) == 3, 200, np.arange(20) % 10).astype(np.uint8))

CASES = [
    # ---- population: CLI arguments ----------------------------------------------------
    pop("--members many", args("--members", "many"), "invalid int value: 'many'", SUB),
    pop("unknown flag", args("--bogus-flag"), "--bogus-flag"),
    pop("--members 0", args("--members", "0"), "--members 0"),
    pop("--members 10**9", args("--members", "1000000000"), "at most 1,000,000 per run"),
    pop("--epochs -3", args("--epochs", "-3"), "epochs=-3"),
    pop("--snapshots 0", args("--snapshots", "0"), "snapshots=0"),
    pop("--seed -1", args("--seed", "-1"), "--seed -1"),
    pop("--strategy bogus", args("--strategy", "teleport"), "teleport"),
    pop("--devices 0", args("--devices", "0"), "devices=0"),
    pop("--max-images 0", args("--max-images", "0"), "--max-images 0"),
    pop("--process-id without --coordinator", args("--process-id", "1"), "--coordinator"),
    # ---- population: pinned properties ------------------------------------------------
    pop("--set unknown property", args("--set", "nonsense=1"), "--set nonsense=", SUB),
    pop("--set unknown option", args("--set", "optimizer=adagrad"), "optimizer=adagrad"),
    pop("--set without =", args("--set", "optimizer"), "'optimizer': expected name=value"),
    pop("--set lrate not a number", args("--set", "lrate=fast"), "lrate=fast"),
    pop("--set lrate out of range", args("--set", "lrate=0.5"), "lrate=0.5"),
    pop("--set dataset unknown", args("--set", "dataset=no_such_set"), "no_such_set"),
    # ---- population: datasets ---------------------------------------------------------
    pop("unknown dataset name", args("--dataset", "no_such_dataset_xyz"), "'no_such_dataset_xyz'"),
    pop("dataset folder missing", lambda root, zoo: ["--dataset", str(root / "nowhere")], "{root}/nowhere"),
    pop("IDX folder lacks a file",
        lambda root, zoo: ["--dataset", str(idx_folder(root, skip=("test_labels",)))],
        "t10k-labels-idx1-ubyte"),
    pop("IDX file truncated", lambda root, zoo: ["--dataset", str(idx_folder(root, train_images=TRUNCATED))],
        "train-images-idx3-ubyte is truncated"),
    pop("IDX file with a corrupt magic number",
        lambda root, zoo: ["--dataset", str(idx_folder(root, train_labels=BAD_MAGIC))],
        "train-labels-idx1-ubyte has a wrong magic number", SUB),
    pop("IDX images/labels count mismatch",
        lambda root, zoo: ["--dataset", str(idx_folder(root, test_labels=FEWER_LABELS))], "19 labels"),
    pop("IDX images of a wrong shape",
        lambda root, zoo: ["--dataset", str(idx_folder(root, train_images=FLAT_IMAGES))], "shape (64,)"),
    pop("IDX test label never seen in training",
        lambda root, zoo: ["--dataset", f"toy={idx_folder(root, test_labels=UNSEEN_LABEL)}"], "e.g. 200"),
    pop("batch size larger than the dataset", args("--max-images", "20", "--set", "batch_size=256"),
        "fewer than batch size 256"),
    # ---- population: the --out folder ------------------------------------------------
    pop("--out is a file", lambda root, zoo: ["--out", str(a_file(root))], "not a folder"),
    pop("--out inside a file", lambda root, zoo: ["--out", str(a_file(root) / "zoo"), "--members", "1",
                                                   "--epochs", "1", "--snapshots", "1", "--max-images", "100",
                                                   "--set", "batch_size=32", "--fixed-architecture"],
        "{root}/a-file", SUB),
    pop("--out non-empty non-zoo folder", lambda root, zoo: ["--out", str(notes_folder(root, "mine"))],
        "holds no zoo"),
    pop("--out holds a zoo, no --overwrite", lambda root, zoo: ["--out", str(copy_zoo(zoo, root))],
        "pass --overwrite", SUB),
    pop("--overwrite but a bad dataset keeps the zoo",
        lambda root, zoo: ["--out", str(copy_zoo(zoo, root)), "--overwrite",
                           "--dataset", str(root / "nowhere")],
        "{root}/nowhere"),
    pop("--resume a folder that holds no zoo",
        lambda root, zoo: ["--resume", "--out", str(notes_folder(root, "mine"))], "not a zoo"),
    pop("--resume a finished zoo", lambda root, zoo: ["--resume", "--out", str(copy_zoo(zoo, root))],
        "nothing to resume"),
    pop("--resume a zoo not written by population.py",
        lambda root, zoo: ["--resume", "--out", str(interrupted(copy_zoo(zoo, root), by_cli=False))],
        "--resume"),
    pop("--resume with --overwrite",
        lambda root, zoo: ["--resume", "--overwrite", "--out", str(interrupted(copy_zoo(zoo, root)))],
        "--resume and --overwrite"),
    # ---- meta: the zoo ----------------------------------------------------------------
    meta("zoo path does not exist", lambda root, zoo: ["--zoo", str(root / "nowhere"), "--target", "lrate"],
         "{root}/nowhere: no such folder"),
    meta("folder that is not a zoo",
         lambda root, zoo: ["--zoo", str(notes_folder(root, "mine")), "--target", "lrate"],
         "not a zoo (no zoo.json)"),
    meta("zoo.json corrupt JSON",
         bad_zoo(lambda z: (z / "zoo.json").write_text("{not json")),
         "zoo.json: unreadable", SUB),
    meta("zoo.json not an object", bad_zoo(lambda z: (z / "zoo.json").write_text("[1, 2]")),
         "zoo.json: unreadable"),
    meta("zoo of another format version", bad_zoo(lambda z: edit_info(z, version=99)),
         "version 99"),
    meta("zoo of another format", bad_zoo(lambda z: edit_info(z, format="other")),
         "format 'other'"),
    meta("partial zoo: status running", bad_zoo(lambda z: edit_info(z, status="running")),
         "has not finished"),
    meta("partial zoo: members.parquet missing", bad_zoo(_rm("members.parquet")),
         "members.parquet missing"),
    meta("corrupt members.parquet",
         bad_zoo(lambda z: (z / "members.parquet").write_bytes(b"garbage")),
         "members.parquet: unreadable"),
    meta("partial zoo: curves.parquet missing", with_meta_zoo(_rm("curves.parquet"), "--target", "test_acc"),
         "curves.parquet"),
    meta("partial zoo: a snapshot checkpoint missing",
         bad_zoo(_rm_first_part, "--model", "stats", "--stats-iterations", "2"),
         "part-00000"),
    # ---- meta: options ----------------------------------------------------------------
    meta("--target missing", with_meta_zoo(lambda z: None), "--target"),
    meta("unknown --target", with_meta_zoo(lambda z: None, "--target", "colour"), "unknown target 'colour'"),
    meta("--target with one class", with_meta_zoo(lambda z: None, "--target", "batch_size"),
         "target batch_size"),
    meta("--snapshots out of bounds", good_meta_zoo("--snapshots", "2-9"), "--snapshots 2-9: out of bounds"),
    meta("--snapshots not a range", good_meta_zoo("--snapshots", "a-b"), "--snapshots a-b"),
    meta("--slice-length longer than the vector", good_meta_zoo("--slice-length", "30000"),
         "--slice-length 30000 is longer than the vector"),
    meta("--slice-length 0", good_meta_zoo("--slice-length", "0"), "--slice-length 0"),
    meta("unknown --model", good_meta_zoo("--model", "svm"), "unknown model 'svm'"),
    meta("unknown --part", good_meta_zoo("--part", "head"), "--part", SUB),
    meta("unknown --analysis", good_meta_zoo("--analysis", "why"), "unknown analysis 'why'"),
    meta("--slice-lengths not numbers", good_meta_zoo("--slice-lengths", "100,abc"),
         "--slice-lengths 100,abc"),
    meta("--test-fraction 1.5", good_meta_zoo("--test-fraction", "1.5"), "test_fraction=1.5"),
    meta("--epochs 0", good_meta_zoo("--epochs", "0"), "epochs=0"),
    meta("--stats-iterations 0", good_meta_zoo("--model", "stats", "--stats-iterations", "0"),
         "--stats-iterations"),
    meta("--set-slices 0", good_meta_zoo("--model", "set", "--set-slices", "0"), "--set-slices"),
    meta("--dmc-width 0", good_meta_zoo("--model", "dmc", "--dmc-width", "0"), "--dmc-width"),
    meta("--units-keep 1.5", good_meta_zoo("--model", "units", "--units-keep", "1.5"), "must be <= 1"),
    meta("--dmc-dropout -0.1", good_meta_zoo("--model", "dmc", "--dmc-dropout", "-0.1"), "--dmc-dropout"),
    meta("--dmc-test-norm unknown", good_meta_zoo("--model", "dmc", "--dmc-test-norm", "train"), "--dmc-test-norm"),
    meta("--steps 0", good_meta_zoo("--steps", "0"), "--steps: 0: must be >= 1"),
    meta("--eval-every 0", good_meta_zoo("--eval-every", "0"), "--eval-every: 0: must be >= 1"),
    meta("--patience 0", good_meta_zoo("--patience", "0"), "--patience: 0: must be >= 1"),
    meta("--seed -1", good_meta_zoo("--seed", "-1"), "--seed"),
    meta("--cache-mb -1", good_meta_zoo("--cache-mb", "-1"), "--cache-mb"),
    meta("--min-test-acc above every network", good_meta_zoo("--min-test-acc", "0.99"),
         "--min-test-acc 0.99"),
    # ---- meta: the --out report folder -----------------------------------------------
    meta("--out is a file", lambda root, zoo: [*good_meta_zoo()(root, zoo), "--out", str(a_file(root))],
         "{root}/a-file is a file"),
    meta("--out holds another report, no --overwrite",
         lambda root, zoo: [*good_meta_zoo("--model", "stats", "--stats-iterations", "2")(root, zoo),
                            "--out", str(a_report(root))], "pass --overwrite", SUB),
    meta("--out non-empty non-report folder",
         lambda root, zoo: [*good_meta_zoo("--model", "stats", "--stats-iterations", "2")(root, zoo),
                            "--out", str(notes_folder(root, "mine"))], "holds no meta report"),
]


# --------------------------------------------------------------------------- #
# Fixtures and runners
# --------------------------------------------------------------------------- #


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, digits) -> Path:
    """One small finished zoo, trained once: 6 members of the tiniest architecture, 2 snapshots."""
    members = sample_members(6, seed=0, datasets=["digits"], pins=dict(TINY, batch_size=128))
    path = tmp_path_factory.mktemp("bad-input-zoo") / "zoo"
    train_zoo(path, members, {"digits": subset(digits, 300)}, epochs=1, snapshots=2)
    return path


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict[str, Path]:
    """Folders outside every case folder: the prepared-dataset cache, the XLA cache."""
    base = tmp_path_factory.mktemp("bad-input-shared")
    return {"datasets": base / "datasets", "xla": base / "xla"}


_MODULES: dict[str, object] = {}


def cli_module(cli: str):
    """experiments/<cli>.py imported once (as in ``python experiments/<cli>.py``, minus __main__)."""
    if cli not in _MODULES:
        spec = importlib.util.spec_from_file_location(f"bad_input_{cli}_cli", SCRIPTS[cli])
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _MODULES[cli] = module
    return _MODULES[cli]


def tree(root: Path) -> dict[str, str]:
    """Every file (sha256 of its bytes) and folder under ``root``, by relative path."""
    out = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        out[rel] = "folder" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def run_subprocess(cli: str, argv: list[str], root: Path, shared) -> tuple[object, str]:
    env = dict(os.environ, NWSJAX_COMPILE_CACHE=str(shared["xla"]), NWSJAX_CACHE=str(shared["datasets"]))
    result = subprocess.run([sys.executable, str(SCRIPTS[cli]), *argv], cwd=root, env=env,
                            capture_output=True, text=True, timeout=180)
    return result.returncode, result.stderr


def _no_training(*_, **__):
    raise AssertionError("validation let this run through: training would start")


def run_in_process(cli: str, argv: list[str], root: Path, monkeypatch, capfd) -> tuple[object, str]:
    module = cli_module(cli)
    monkeypatch.chdir(root)  # a default relative --out lands in the case folder, where it is seen
    if cli == "population":
        from nwsjax.cli import main_wrapper

        monkeypatch.setattr(module, "run_population", _no_training)
        monkeypatch.setattr(module, "enable_compilation_cache", lambda *a, **k: None)
        entry = main_wrapper(module.main)  # what its __main__ runs
    else:
        entry = module.main
    capfd.readouterr()
    trace = ""
    try:
        code = entry(argv)
    except SystemExit as exit_:
        code = exit_.code
    except BaseException:  # what the process would have shown: a traceback
        code, trace = None, traceback.format_exc()
    return code, capfd.readouterr().err + trace


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(case, zoo, shared, tmp_path, monkeypatch, capfd):
    root = tmp_path / "case"
    root.mkdir()
    argv = case.build(root, zoo)
    if case.cli == "population":
        if "--out" not in argv:
            argv += ["--out", str(root / "out")]
        argv += ["--quiet", "--cache-dir", str(shared["datasets"])]
    else:
        if "--out" not in argv:
            argv += ["--out", str(root / "report")]
        argv += ["--quiet"]
    before = tree(root)

    if case.in_subprocess:
        code, stderr = run_subprocess(case.cli, argv, root, shared)
    else:
        code, stderr = run_in_process(case.cli, argv, root, monkeypatch, capfd)

    shown = f"{case.cli}.py {' '.join(argv)}\nexit code {code}; stderr:\n{stderr}"
    assert "Traceback" not in stderr, shown
    assert code == 2, shown
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), shown
    fragment = case.fragment.format(root=root)
    assert fragment in lines[0], f"{fragment!r} not named in: {lines[0]}"
    after = tree(root)
    changed = sorted(k for k in before.keys() & after.keys() if before[k] != after[k])
    removed, added = sorted(before.keys() - after.keys()), sorted(after.keys() - before.keys())
    assert (changed, removed, added) == ([], [], []), f"files changed/removed/added by {shown}"
