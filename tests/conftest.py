"""Test-wide setup.

The repository root leaves ``sys.path``: it holds our top-level ``kernels/`` folder, which there
would shadow Hugging Face's ``kernels`` package that transformers >= 5.25 imports (``python -m
pytest`` puts the working directory first; every test then failed with ``cannot import name
'CUDAProperties' from 'kernels'``). ``pali.kernels`` is bound by path and needs no entry there.

``TRITON_INTERPRET=1`` must be set before Triton is imported anywhere, so the fused kernels run
on the CPU through Triton's interpreter when no GPU is present.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT]

import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

# Under pytest-xdist each worker takes one core; alone, the suite may use two. Tiny models gain
# nothing from more threads, and oversubscribed OpenMP threads wait on each other.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu") is not None:  # not `in keywords`: that also matches a "gpu" directory
            item.add_marker(skip_gpu)
