"""A non-editable install runs the lab's quickstart, a method overlay and the prior recipe, far from any checkout.

The package is built from a copy of this tree (what a wheel gets: the package and the configs it ships) into a
fresh venv whose site-packages chain to the running one's for the dependencies (`pip install --no-deps
--no-build-isolation`: nothing is downloaded), then run from an empty folder without PYTHONPATH.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
SCRIPT = """
import json, sys, warnings
warnings.simplefilter("ignore")
import medloc_lightning
from medloc_lightning.lab import CONFIGS
from medloc_lightning.lab.__main__ import quickstart, run
from medloc_lightning.lab.qwen_prior import main as prior_recipe

out = {"package": medloc_lightning.__file__, "configs": str(CONFIGS)}
out["quickstart"] = quickstart(out="runs/lab", data="data/lab", steps=2, images=20)
out["overlay"] = run("fixed_tau", steps=1, data="data/lab", images=20)
prior_recipe(["--out", "prior", "--work-dir", "prior_work", "--size", "56", "--n-source", "20", "--n-target", "20",
              "--max-steps", "1", "--val-every", "1", "--val-records", "2", "--target-presets", "lab"])
print("RESULT " + json.dumps(out, default=str))
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh venv holding a non-editable install of this tree."""
    tmp_path = tmp_path_factory.mktemp("install")
    source = tmp_path / "source"
    source.mkdir()
    for name in ("setup.py", "setup.cfg", "README.md", "MANIFEST.in"):
        shutil.copy(ROOT / name, source / name)
    for name in ("medloc_lightning", "configs"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch, lightning, ...
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(source)],
                   cwd=tmp_path, env=_clean_env(), check=True, capture_output=True, timeout=300)
    return python


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the venv layout (bin/python) is POSIX's")
def test_an_installed_package_runs_the_lab_quickstart_an_overlay_and_the_prior_recipe(installed: Path,
                                                                                       tmp_path: Path) -> None:
    python = installed
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run([python, "-c", SCRIPT], cwd=work, env=_clean_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.split("RESULT ", 1)[1])
    site = str(python.parents[1])
    assert out["package"].startswith(site) and out["configs"].startswith(site)  # the installed copy, its configs
    assert set(out["quickstart"]) >= {"test/acc@0.5", "test/miou"} and (work / "runs/lab/curriculum.png").is_file()
    assert out["overlay"]["method"] == "fixed_tau" and out["overlay"]["final_tau"] == 0.5
    assert (work / "prior" / "model.safetensors").is_file() and (work / "prior" / "medloc_prior.json").is_file()
    assert (python.parent / "medloc").is_file()  # the console scripts are installed too


@pytest.mark.slow
def test_an_installed_lab_without_its_configs_fails_in_one_line(installed: Path, tmp_path: Path) -> None:
    package = Path(subprocess.run([installed, "-c", "import medloc_lightning; print(medloc_lightning.__file__)"],
                                  capture_output=True, text=True, check=True, env=_clean_env(), cwd=tmp_path
                                  ).stdout.strip()).parent
    (package / "configs").rename(package / "configs.hidden")
    try:
        proc = subprocess.run([installed, "-m", "medloc_lightning.lab", "configs"], cwd=tmp_path,
                              env=_clean_env(), capture_output=True, text=True, timeout=300)
    finally:
        (package / "configs.hidden").rename(package / "configs")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
        "medloc-lab: error: no configs folder with medloc_qwen2_5_vl_3b.yaml")
