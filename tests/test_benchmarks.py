"""The benchmarks run (``--quick``: tiny sizes, one repetition) so they cannot rot. Never timed."""

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _run(script: str) -> str:
    out = subprocess.run([sys.executable, str(BENCHMARKS / script), "--quick"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


@pytest.mark.slow
def test_generate_benchmark_quick():
    """It checks token equality with transformers itself (exits non-zero otherwise)."""
    out = _run("generate.py")
    assert out.count("ratio vs transformers:") == 3
    assert "bf16 output layer" in out and "tokens differ" in out


@pytest.mark.slow
def test_train_step_benchmark_quick():
    out = _run("train_step.py")
    assert "ours s/step" in out
    assert len(out.strip().splitlines()) == 3  # header, column names, one resolution row


@pytest.mark.slow
def test_eval_speed_benchmark_quick():
    """It exits non-zero when our caption metrics differ from pycocoevalcap's."""
    out = _run("eval_speed.py")
    assert "ratio ours/theirs:" in out or "java is not installed" in out
