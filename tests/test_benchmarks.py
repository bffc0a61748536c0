"""The benchmarks run (``--quick``: tiny sizes, one repetition) so they cannot rot. Never timed."""

import math
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


def test_decode_peers_benchmark_quick(tmp_path):
    """pali against transformers and CTranslate2 at a tiny size: it exits non-zero when pali fp32's
    tokens differ from transformers'; every row prints its ratios and memory floor."""
    pytest.importorskip("ctranslate2", reason='CTranslate2 is the peer: pip install ctranslate2 to run this')
    import json

    out = subprocess.run([sys.executable, str(BENCHMARKS / "decode_peers.py"), "--quick", "--out", str(tmp_path / "r.json")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("token agreement with pali fp32") == 3
    assert "Full PaLI path with images" in out.stdout
    result = json.loads((tmp_path / "r.json").read_text())
    assert [r["row"] for r in result["text_rows"]] == ["greedy b1", "greedy b8", "beam b1 x4"]
    for row in result["text_rows"]:
        assert row["agreement_with_pali_fp32"]["transformers"] == 1.0
        for engine in ("pali fp32", "pali int8", "pali bf16"):
            # present and finite; their sign is timing (a tiny step can measure below the noise)
            assert all(math.isfinite(row["engines"][engine][k]) for k in ("vs ct2 float32", "step_ms", "vs_floor"))
