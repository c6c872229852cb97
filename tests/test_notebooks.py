"""The tutorial notebooks (notebooks/*.ipynb) run top to bottom, with tiny settings.

Notebook 01 trains one tiny zoo (12 networks, 2 epochs, one cohort) in a temporary
folder; 02 and 03 read it (each trains it itself when run alone). The kernel runs this
interpreter in a temporary working directory, so nothing is written into the repository.
Each executed notebook is saved next to the zoo for inspection.
"""

import json
import os
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import AsyncKernelManager  # noqa: E402

from nwsjax import open_zoo  # noqa: E402

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = "nwsjax-notebooks"
MEMBERS, EPOCHS, SNAPSHOTS = 12, 2, 3
# 12 networks with half of them in test: the smallest zoo of seed 0 on which a
# classification target (initialization) can be class-balanced on both sides.
TINY = {
    "NWSJAX_NOTEBOOK_MEMBERS": str(MEMBERS),
    "NWSJAX_NOTEBOOK_EPOCHS": str(EPOCHS),
    "NWSJAX_NOTEBOOK_SNAPSHOTS": str(SNAPSHOTS),
    "NWSJAX_NOTEBOOK_MAX_IMAGES": "200",
    "NWSJAX_NOTEBOOK_SEED": "0",
    "NWSJAX_NOTEBOOK_META_TARGETS": "initialization",
    # The DMC is left out here: its 12 conv layers take ~20 s to compile per shape on a
    # busy 2-core CPU (tests/test_meta.py covers it); the notebook's code is the same for
    # every model.
    "NWSJAX_NOTEBOOK_META_MODELS": "set,stats",
    "NWSJAX_NOTEBOOK_HAND_MODEL": "set",
    "NWSJAX_NOTEBOOK_META_EPOCHS": "2",
    "NWSJAX_NOTEBOOK_META_BATCH": "4",
    "NWSJAX_NOTEBOOK_SLICE_LENGTH": "500",
    "NWSJAX_NOTEBOOK_SLICE_LENGTHS": "500",
    "NWSJAX_NOTEBOOK_DMC_WIDTH": "0.125",
    "NWSJAX_NOTEBOOK_ENSEMBLE": "4",
    "NWSJAX_NOTEBOOK_POSITIONS": "8",
    "NWSJAX_NOTEBOOK_STATS_ITERATIONS": "10",
    "NWSJAX_NOTEBOOK_TEST_FRACTION": "0.5",
}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The working directory, the environment and a kernelspec for this interpreter."""
    root = tmp_path_factory.mktemp("notebooks")
    spec = root / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "nwsjax (tests)",
        "language": "python",
    }))
    env = dict(os.environ, **TINY, NWSJAX_NOTEBOOK_ZOO=str(root / "zoo"), NWSJAX_CACHE=str(root / "cache"))
    return root, env, KernelSpecManager(kernel_dirs=[str(root / "kernels")])


def execute(workspace, name):
    """Runs notebook ``name`` top to bottom (raises on the first failing cell); returns it executed."""
    root, env, specs = workspace
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    km = AsyncKernelManager(kernel_name=KERNEL, kernel_spec_manager=specs)
    client = nbclient.NotebookClient(nb, km=km, timeout=300, resources={"metadata": {"path": str(root)}})
    try:
        client.execute(env=env)
    finally:
        nbformat.write(nb, root / name)
    return nb


def outputs(nb, kind):
    return [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if kind in o.get("data", {})]


def stream_text(nb):
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def test_notebooks_are_committed_without_outputs():
    names = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert names == ["01_train_a_population.ipynb", "02_weight_space.ipynb", "03_meta_classifiers.ipynb"]
    for name in names:
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert "NWSJAX_NOTEBOOK_ZOO" in code[0].source, f"{name}: the first code cell holds the settings"
        assert all(c.outputs == [] and c.execution_count is None for c in code), f"{name}: clear its outputs"


def test_01_train_a_population(workspace):
    nb = execute(workspace, "01_train_a_population.ipynb")
    assert len(outputs(nb, "image/png")) >= 3
    zoo = open_zoo(workspace[0] / "zoo")
    assert len(zoo.members) == MEMBERS and zoo.num_snapshots == SNAPSHOTS
    assert zoo.members.cohort.nunique() == 1
    assert len(zoo.curves) == MEMBERS * EPOCHS
    assert "test accuracy: median" in stream_text(nb)  # the summary table was printed
    html = "".join(o["data"]["text/html"] for o in outputs(nb, "text/html"))
    assert html.count("<tr>") >= MEMBERS  # the members table was displayed


def test_02_weight_space(workspace):
    nb = execute(workspace, "02_weight_space.ipynb")
    assert len(outputs(nb, "image/png")) >= 7
    assert f"{MEMBERS} members x {SNAPSHOTS} snapshots" in stream_text(nb)


def test_03_meta_classifiers(workspace):
    nb = execute(workspace, "03_meta_classifiers.ipynb")
    assert len(outputs(nb, "image/png")) >= 6
    meta = workspace[0] / "zoo-meta"
    results = json.loads((meta / "all" / "results.json").read_text())
    assert set(results["targets"]) == {"initialization"}
    assert set(results["models"]) == {"set", "stats"}
    deep = json.loads((meta / "initialization" / "results.json").read_text())
    analyses = deep["targets"]["initialization"]["analyses"]
    assert set(analyses["where"]) == {"set"}
    assert {row["snapshot"] for row in analyses["when"]} == set(range(1, SNAPSHOTS + 1))
    assert {row["length"] for row in analyses["slice_length"]} == {500}
    assert (meta / "all" / "confusion-initialization-set.png").is_file()
