"""The wheel ships every package (kernels/ included) and the README's commands stay true."""

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# The folder torch is installed in: every dependency, without the .pth import hooks of an
# editable install (``python -S`` skips them), so a run there sees only the trees we name.
DEPS = str(Path(torch.__file__).parents[1])
WHERE = "import pali, pali.kernels.api; print(pali.__file__); print(pali.kernels.api.__file__)"


def _import_from(pythonpath: list[Path | str], *flags: str) -> tuple[Path, Path]:
    """Where ``pali`` and ``pali.kernels.api`` come from in a fresh interpreter (run outside ROOT)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, pythonpath))}
    out = subprocess.run([sys.executable, *flags, "-c", WHERE], env=env, cwd=Path(DEPS).parent,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    pali_init, kernels_api = map(Path, out.stdout.split())
    return pali_init, kernels_api


@pytest.fixture
def second_checkout(tmp_path):
    """A copy of the repository's import trees (src/ and kernels/) somewhere else."""
    tree = tmp_path / "other-checkout"
    for part in ("src", "kernels"):
        shutil.copytree(ROOT / part, tree / part, ignore=shutil.ignore_patterns("__pycache__"))
    return tree


def _packages():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]


def test_every_subpackage_is_listed():
    found = {
        ".".join(p.parent.relative_to(ROOT / "src").parts)
        for p in (ROOT / "src" / "pali").rglob("__init__.py")
    }
    assert found | {"pali.kernels"} == set(_packages())


@pytest.mark.slow
def test_wheel_contains_kernels_and_console_script(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True,
    )
    (wheel,) = tmp_path.glob("pali_vlm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for module in ("pali/kernels/_package.py", "pali/kernels/t5_attention.py", "pali/kernels/reference.py",
                   "pali/models/pali.py", "pali/cli/__init__.py"):
        assert module in names, module
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "pali = pali.cli:main" in entry_points
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(site), str(wheel)],
                   check=True)
    assert _import_from([site, DEPS], "-S") == (site / "pali" / "__init__.py", site / "pali" / "kernels" / "api.py")


def _readme_commands():
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)


def test_bare_checkout_imports_whole(second_checkout):
    """``PYTHONPATH=src`` with nothing of pali installed: pali and its kernels, from that tree."""
    assert _import_from([second_checkout / "src", DEPS], "-S") == (
        second_checkout / "src" / "pali" / "__init__.py", second_checkout / "kernels" / "api.py")


def test_checkout_on_pythonpath_beats_another_editable_install(second_checkout):
    """With this repository installed (editable, as the README installs it) and another checkout
    on ``PYTHONPATH``, both ``pali`` and ``pali.kernels`` come from the other checkout."""
    installed_pali, _ = _import_from([])
    assert second_checkout not in installed_pali.parents  # the installed pali is another tree
    assert _import_from([second_checkout / "src"]) == (
        second_checkout / "src" / "pali" / "__init__.py", second_checkout / "kernels" / "api.py")


def test_ci_runs_the_readme_test_command():
    install_and_demo, install_and_test = _readme_commands()[:2]
    assert "pytest" in install_and_test and "pali demo" in install_and_demo
    assert "pip install torch==2.13.0" in install_and_test  # CPU torch first where none is present
    assert install_and_test in (ROOT / ".ci" / "run").read_text()


def test_readme_quick_start_prints_a_caption_an_answer_and_boxes():
    """The quick start runs and prints what its comments promise: two non-empty texts, then a
    list of detections with boxes inside the image."""
    (block,) = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    printed: list = []
    scope = {"print": lambda *values: printed.extend(values)}
    exec(compile(block, "README.md", "exec"), scope)
    caption, answer, boxes = printed
    assert isinstance(caption, str) and caption.strip() and isinstance(answer, str) and answer.strip()
    width, height = scope["image"].size
    assert isinstance(boxes, list)
    for found in boxes:
        x0, y0, x1, y1 = found.box
        assert 0 <= x0 <= x1 <= width and 0 <= y0 <= y1 <= height, found
