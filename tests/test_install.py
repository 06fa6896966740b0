"""``pip install <checkout>`` without constraints.txt, in a fresh venv: the ranges of pyproject.toml resolve, the
package imports, and the recipes ship inside the wheel (addressable by name, ``base:`` included).

Slow (minutes: it installs torch and the rest of the stack into the venv, from pip's cache when warm): ``pytest -m slow
tests/test_install.py``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import unimim

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import importlib.metadata as md
import torch, torchaudio, torchvision
import unimim, modalities
from unimim.app.experiment import load_recipe
from unimim.app.recipes import recipes_root
from unimim.app.registry import MODALITIES, OBJECTIVES, build_objective
assert sorted(MODALITIES) == ["image", "speech", "text"], sorted(MODALITIES)
root = recipes_root()
assert root.parts[-2:] == ("unimim", "recipes") and "site-packages" in root.parts, root  # inside the installed package
cfg = load_recipe("image/mae_fmnist_cpu", ["encoder.dim=32", "encoder.depth=1", "encoder.num_heads=2"])
assert cfg.data.root == "/usr/share/datasets/fashion-mnist"  # merged from its base, image/_base/fmnist_cpu.yaml
model = build_objective(cfg)
wave = torchaudio.transforms.Resample(22050, 16000)(torch.zeros(1, 22050))  # torchaudio's library loads and runs
assert wave.shape == (1, 16000), wave.shape
print("torch", torch.__version__, "torchaudio", torchaudio.__version__, "torchvision", torchvision.__version__)
n_params = sum(p.numel() for p in model.parameters())
print("unimim", md.version("unimim"), "objectives", len(OBJECTIVES), "params", n_params)
"""


@pytest.mark.slow
def test_pip_install_without_constraints_resolves_and_imports(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    bin_dir = venv / "bin"
    install = subprocess.run([bin_dir / "python", "-m", "pip", "install", "--quiet", str(ROOT)], cwd=tmp_path,
                             capture_output=True, text=True, timeout=3600)
    assert install.returncode == 0, install.stderr[-4000:]
    # run outside the checkout, so that only the installed package can be imported
    check = subprocess.run([bin_dir / "python", "-c", CHECK], cwd=tmp_path, capture_output=True, text=True,
                           timeout=600)
    assert check.returncode == 0, check.stderr[-4000:]
    versions = dict(zip(*[iter(check.stdout.split()[:6])] * 2))
    torch_minor = versions["torch"].split("+")[0].rsplit(".", 1)[0]  # "2.11"
    assert versions["torchaudio"].startswith(torch_minor), versions  # the matching triple resolved
    assert versions["torchvision"].startswith(f"0.{int(torch_minor.split('.')[1]) + 15}"), versions
    version = subprocess.run([bin_dir / "unimim", "--version"], cwd=tmp_path, capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.strip() == f"unimim {unimim.__version__}", version
    listing = subprocess.run([bin_dir / "unimim", "recipes"], cwd=tmp_path, capture_output=True, text=True)
    assert listing.returncode == 0, listing.stderr
    names = [line.split()[0] for line in listing.stdout.splitlines()[1:]]
    shipped = sorted(p.relative_to(ROOT / "recipes").with_suffix("").as_posix()
                     for p in (ROOT / "recipes").rglob("*.yaml") if "/_" not in f"/{p.relative_to(ROOT / 'recipes')}")
    assert names == shipped
    print(check.stdout)
