"""The wheel ships every package (kernels/ included) and the README's commands stay true."""

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
    for module in ("pali/kernels/__init__.py", "pali/kernels/t5_attention.py", "pali/kernels/reference.py",
                   "pali/model.py", "pali/cli/__init__.py"):
        assert module in names, module
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "pali = pali.cli:main" in entry_points


def _readme_commands():
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), re.S)


def test_ci_runs_the_readme_test_command():
    install_and_demo, install_and_test = _readme_commands()[:2]
    assert "pytest" in install_and_test and "pali demo" in install_and_demo
    assert "pip install torch==2.13.0" in install_and_test  # CPU torch first where none is present
    assert install_and_test in (ROOT / ".ci" / "run").read_text()


def test_readme_python_blocks_run():
    for block in re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S):
        exec(compile(block, "README.md", "exec"), {})
