"""notebooks/curriculum_lab.ipynb: stored without outputs, and executes top to bottom on a tiny budget.

The notebook runs in a real Jupyter kernel (nbclient) started from this interpreter, in an empty temporary
working directory, with the budget knobs overridden through the environment so it finishes in well under a minute.
"""
from __future__ import annotations

import base64
import io
import json
import re
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from PIL import Image

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "curriculum_lab.ipynb"
STEPS = 40
BUDGET = {"LAB_STEPS": str(STEPS), "LAB_N_IMAGES": "60", "LAB_SIZE": "64", "LAB_SEED": "0"}
SCHEDULES = ("medloc", "fixed_tau")
PLOTS = {"data", "tau", "hit_rate", "medloc_curves", *(f"predictions:{m}" for m in SCHEDULES)}


def test_notebook_is_stored_without_outputs() -> None:
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for i, cell in enumerate(code):
        assert not cell.outputs and cell.execution_count is None, f"code cell {i} has stored outputs: clear them"


def _kernel_manager(tmp_path: Path):
    """A kernel manager whose only kernelspec runs ipykernel with this interpreter (the venv), whatever
    kernels the user has registered elsewhere."""
    from jupyter_client import KernelManager
    from jupyter_client.kernelspec import KernelSpecManager

    spec_dir = tmp_path / "kernels" / "medloc-lab-test"
    spec_dir.mkdir(parents=True)
    spec = {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "medloc-lab-test", "language": "python"}
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    specs = KernelSpecManager(kernel_dirs=[str(spec_dir.parent)], ensure_native_kernel=False)
    return KernelManager(kernel_name="medloc-lab-test", kernel_spec_manager=specs)


def _png(output: dict) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(output["data"]["image/png"])))
    image.load()
    return image


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory) -> tuple[nbformat.NotebookNode, Path]:
    from nbclient import NotebookClient

    tmp = tmp_path_factory.mktemp("notebook")
    work = tmp / "work"
    work.mkdir()
    env = {**BUDGET, "LAB_DATA": str(tmp / "data"), "IPYTHONDIR": str(tmp / "ipython"),
           "JUPYTER_RUNTIME_DIR": str(tmp / "runtime")}
    with pytest.MonkeyPatch.context() as mp:  # the kernel inherits this process's environment
        for key, value in env.items():
            mp.setenv(key, value)
        nb = nbformat.read(NOTEBOOK, as_version=4)
        client = NotebookClient(nb, km=_kernel_manager(tmp), timeout=240, allow_errors=False,
                                resources={"metadata": {"path": str(work)}})
        client.execute()  # raises CellExecutionError naming the failing cell
    return nb, work


def _outputs(nb: nbformat.NotebookNode) -> list[dict]:
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]


def test_notebook_runs_without_errors_and_writes_nothing_to_its_working_directory(executed) -> None:
    nb, work = executed
    assert not [out for out in _outputs(nb) if out["output_type"] == "error"]
    assert all(cell.execution_count for cell in nb.cells if cell.cell_type == "code")
    assert list(work.iterdir()) == []


def test_notebook_shows_every_plot_and_picture(executed) -> None:
    nb, _ = executed
    shown = {out["metadata"]["medloc_lab"]: out for out in _outputs(nb)
             if out["output_type"] == "display_data" and "medloc_lab" in out.get("metadata", {})}
    assert set(shown) == PLOTS
    for name, out in shown.items():
        image = _png(out)
        assert image.width >= 200 and image.height >= 100, f"{name}: {image.size}"
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
        assert colours is None or len(colours) > 2, f"{name} is blank"
    for name in ("data", *(f"predictions:{m}" for m in SCHEDULES)):  # ground truth drawn on every tile
        assert _count(shown[name], (0, 200, 0)) > 50, f"{name} has no green GT box"
    for m in SCHEDULES:
        assert _count(shown[f"predictions:{m}"], (230, 0, 0)) > 50, f"predictions:{m} has no red predicted box"


def _count(output: dict, colour: tuple[int, int, int]) -> int:
    """Pixels of exactly ``colour`` in a displayed PNG."""
    return int((np.asarray(_png(output).convert("RGB")) == colour).all(-1).sum())


def test_notebook_tabulates_both_schedules_with_the_requested_budget(executed) -> None:
    nb, _ = executed
    tables = [out["data"]["text/markdown"] for out in _outputs(nb)
              if out["output_type"] == "display_data" and "Acc@0.5" in out.get("data", {}).get("text/markdown", "")]
    assert len(tables) == 1
    lines = [line for line in tables[0].splitlines() if line.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header[:6] == ["schedule", "steps", "Acc@0.5", "Acc@0.75", "pseudo-mAP", "mIoU"]
    rows = {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in lines[2:])}
    assert set(rows) == set(SCHEDULES)
    for method, cells in rows.items():
        assert int(cells[1]) == STEPS, f"{method} did not train for LAB_STEPS={STEPS} steps"
        acc50, acc75, pmap, miou = (float(c) for c in cells[2:6])
        assert 0.0 <= acc75 <= acc50 <= 100.0 and 0.0 <= pmap <= acc50 and 0.0 <= miou <= 100.0, cells
    assert float(rows["fixed_tau"][header.index("final tau")]) == 0.5
    text = "".join(out.get("text", "") for out in _outputs(nb) if out["output_type"] == "stream")
    assert re.search(rf"\b{STEPS} steps per schedule, 60 images of 64 px\b", text)


def test_pictured_models_are_the_ones_lab_run_measured(executed) -> None:
    """Section 5 retrains each schedule from the same parts as lab.run: on one machine it must be the same model."""
    nb, _ = executed
    text = "".join(out.get("text", "") for out in _outputs(nb) if out["output_type"] == "stream")
    pattern = r"(\w+): this model's test Acc@0.5 ([\d.]+), mIoU ([\d.]+) \(lab.run's: ([\d.]+), ([\d.]+)\)"
    found = {m: ((acc, miou), (lab_acc, lab_miou)) for m, acc, miou, lab_acc, lab_miou in re.findall(pattern, text)}
    assert set(found) == set(SCHEDULES)
    for method, (ours, lab_run) in found.items():
        assert ours == lab_run, f"{method}: the notebook's model (Acc@0.5, mIoU {ours}) is not lab.run's ({lab_run})"
