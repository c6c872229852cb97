"""Tests of experiments/meta.py: one-line errors with exit code 2, the report folder, determinism."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from test_meta import OPTIMIZERS, SMALL, _lrate, planted, write_zoo

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "meta.py"


def _cli():
    spec = importlib.util.spec_from_file_location("meta_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def cli():
    return _cli()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """36 networks, 3 snapshots, the optimizer planted in the weights."""
    specs = [{"arch": SMALL, "optimizer": OPTIMIZERS[i % 3], "lrate": _lrate(i)} for i in range(36)]
    return write_zoo(tmp_path_factory.mktemp("cli"), specs, planted, 3)


def _error(cli, capsys, *argv) -> str:
    code = cli.main(list(argv))
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]


def _error_exit(cli, capsys, *argv) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(list(argv))
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    return lines[0]


def test_bad_input_gives_one_line_errors(cli, zoo, tmp_path, capsys):
    assert "unknown target 'colour'" in _error(cli, capsys, "--zoo", str(zoo.path), "--target", "colour")
    (tmp_path / "empty").mkdir()
    assert "not a zoo" in _error(cli, capsys, "--zoo", str(tmp_path / "empty"), "--target", "optimizer")
    assert "no such folder" in _error(cli, capsys, "--zoo", str(tmp_path / "missing"), "--target", "optimizer")
    line = _error(cli, capsys, "--zoo", str(zoo.path), "--target", "optimizer", "--snapshots", "2-9")
    assert "out of bounds" in line and "1..3" in line
    line = _error(cli, capsys, "--zoo", str(zoo.path), "--target", "optimizer", "--slice-length", "30000")
    assert "longer than the vector of network" in line and "21260" in line
    assert "unknown model" in _error(cli, capsys, "--zoo", str(zoo.path), "--target", "optimizer", "--model", "svm")
    assert "unknown analysis" in _error(cli, capsys, "--zoo", str(zoo.path), "--target", "optimizer", "--analysis", "why")
    assert "one class" in _error(cli, capsys, "--zoo", str(zoo.path), "--target", "activation")
    assert "--patience: 0: must be >= 1" in _error_exit(cli, capsys, "--zoo", str(zoo.path), "--target", "optimizer",
                                                         "--patience", "0")
    assert "invalid choice" in _error_exit(cli, capsys, "--zoo", str(zoo.path), "--target", "optimizer",
                                           "--dmc-test-norm", "train")
    assert "--target" in _error_exit(cli, capsys, "--zoo", str(zoo.path))
    assert "invalid int" in _error_exit(cli, capsys, "--zoo", str(zoo.path), "--target", "optimizer", "--slice-length", "x")


def test_process_exit_code_and_stderr(tmp_path):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--zoo", str(tmp_path), "--target", "optimizer"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {tmp_path}: not a zoo (no zoo.json); pass the --out folder of a population run"]


ARGS = ["--target", "optimizer,lrate", "--model", "set,units,stats,unitstats", "--snapshots", "2-3", "--slice-length", "128",
        "--epochs", "2", "--batch-size", "16", "--ensemble", "4", "--positions", "5", "--set-slices", "2",
        "--stats-iterations", "20", "--analysis", "where,when,slice-length", "--slice-lengths", "128",
        "--quiet", "--seed", "3"]


def _numbers(results: dict) -> dict:
    """The metrics of a run, without timings."""
    out = {}
    for name, entry in results["targets"].items():
        for model, r in entry["models"].items():
            out[f"{name}/{model}"] = (r["single"], r.get("ensemble"), [h["loss"] for h in r.get("history", [])])
        out[f"{name}/analyses"] = entry["analyses"]
    return out


def test_run_writes_report_repeats_exactly_and_resumes(cli, zoo, tmp_path, capsys):
    first, second = tmp_path / "a", tmp_path / "b"
    assert cli.main(["--zoo", str(zoo.path), *ARGS, "--out", str(first)]) == 0
    printed = capsys.readouterr().out
    assert "== optimizer: 3 classes, chance  33.3% ==" in printed and "regression" in printed
    results = json.loads((first / "results.json").read_text())
    assert results["config"]["seed"] == 3 and results["config"]["slice_length"] == 128
    assert {"jax", "flax", "optax", "numpy", "scikit-learn"} <= set(results["versions"])
    assert results["seeds"]["seed"] == 3
    optimizer = results["targets"]["optimizer"]
    assert optimizer["chance"] == pytest.approx(1 / 3)
    assert set(optimizer["models"]) == {"set", "units", "stats", "unitstats"}
    assert optimizer["models"]["unitstats"]["features"] > optimizer["models"]["stats"]["features"]
    assert "ensemble" not in optimizer["models"]["units"] and set(optimizer["analyses"]["where"]) == {"set"}
    assert 0 <= optimizer["models"]["set"]["ensemble"]["accuracy"] <= 1
    lrate = results["targets"]["lrate"]["models"]["stats"]["single"]
    assert {"mae", "ci95", "spearman", "kendall_tau", "r2"} <= set(lrate)
    assert set(results["split"]["train"]).isdisjoint(results["split"]["test"])
    where = optimizer["analyses"]["where"]["set"]
    assert len(where["metric"]) == 5 and where["boundaries"][0]["layer"] == "conv0"
    assert [r["snapshot"] for r in optimizer["analyses"]["when"] if r["model"] == "units"] == [1, 2, 3]
    assert [r["length"] for r in optimizer["analyses"]["slice_length"]] == [128]
    files = {p.name for p in first.iterdir()}
    assert {"results.json", "summary.txt", "confusion-optimizer-set.png", "confusion-optimizer-stats.png",
            "where-optimizer-set.png", "when-optimizer.png", "slice-length-optimizer.png", "where-lrate-set.png"} <= files
    assert (first / "confusion-optimizer-set.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mean" in (first / "summary.txt").read_text()
    history = optimizer["models"]["set"]["history"]  # the learning curve: one point per epoch (2 steps each here)
    assert [r["epoch"] for r in history] == [1, 2] and all({"step", "loss", "train", "train_eval", "val"} <= set(r) for r in history)
    assert optimizer["models"]["set"]["train_eval"] == history[-1]["train_eval"]
    assert (first / "curve-optimizer-set.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (first / "curve-lrate-units.png").exists() and not (first / "curve-optimizer-stats.png").exists()

    assert cli.main(["--zoo", str(zoo.path), *ARGS, "--out", str(second)]) == 0
    again = json.loads((second / "results.json").read_text())
    assert _numbers(again) == _numbers(results)
    assert np.isfinite(again["targets"]["optimizer"]["models"]["set"]["history"][-1]["loss"])

    # experiments/meta_table.py: the two runs side by side
    spec = importlib.util.spec_from_file_location("meta_table", ROOT / "experiments" / "meta_table.py")
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    capsys.readouterr()
    assert table.main([str(first), f"{second}@again"]) == 0
    markdown = capsys.readouterr().out.splitlines()
    assert markdown[0] == ("| target | chance | set | units | stats | unitstats | set-again | units-again | stats-again "
                           "| unitstats-again |")
    row = next(line for line in markdown if line.startswith("| optimizer (3) | 33.3% |")).rstrip(" |").split(" | ")[2:]
    assert row[:4] == row[4:8]  # the same numbers: the runs repeat exactly
    accuracy = optimizer["models"]["set"]["ensemble"]
    assert row[0] == f"{100 * accuracy['accuracy']:.1f}% ± {100 * accuracy['ci95']:.1f}"
    assert any(line.startswith("| lrate |") for line in markdown) and any("**mean**" in line for line in markdown)
    other = tmp_path / "other"
    other.mkdir()
    moved = dict(again, split={**again["split"], "test": again["split"]["test"][1:]})
    (other / "results.json").write_text(json.dumps(moved))
    assert "another zoo, split or snapshot range" in _error(table, capsys, str(first), str(other))
    assert "is in two of the reports" in _error(table, capsys, str(first), str(second))
    assert "no readable results.json" in _error(table, capsys, str(first), str(tmp_path))

    # --resume: a report cut inside the lrate target (its set and units models done, stats
    # not) ends as the uninterrupted one. Made by hand from the finished run; a kept result
    # carries a marker, so the test sees it was not recomputed (set is fitted again: the
    # where analysis needs it).
    cut = tmp_path / "cut"
    cut.mkdir()
    interrupted = json.loads(json.dumps(results))
    del interrupted["summary"]
    lrate = interrupted["targets"]["lrate"]
    del lrate["models"]["stats"], lrate["analyses"]
    lrate["partial"] = True
    lrate["models"]["units"]["kept"] = "marker"
    interrupted["targets"]["optimizer"]["models"]["stats"]["kept"] = "marker"
    (cut / "results.json").write_text(json.dumps(interrupted))
    argv = ["--zoo", str(zoo.path), *ARGS, "--out", str(cut)]
    assert cli.main([*argv, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "optimizer: kept from the interrupted run" in printed and "lrate, units: kept" in printed
    resumed = json.loads((cut / "results.json").read_text())
    assert resumed["targets"]["lrate"]["models"]["units"].pop("kept") == "marker"
    assert resumed["targets"]["optimizer"]["models"]["stats"].pop("kept") == "marker"
    assert "partial" not in resumed["targets"]["lrate"]
    assert _numbers(resumed) == _numbers(results) and resumed["summary"] == results["summary"]
    assert "setting seed is 4, the interrupted run's 3" in _error(cli, capsys, *argv, "--seed", "4", "--resume")
    assert "contradict" in _error(cli, capsys, *argv, "--resume", "--overwrite")
    assert "holds no meta report to continue" in _error(cli, capsys, *argv[:-1], str(tmp_path / "none"), "--resume")
