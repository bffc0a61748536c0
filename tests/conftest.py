"""Test-wide setup.

``TRITON_INTERPRET=1`` must be set before Triton is imported anywhere, so the fused kernels run
on the CPU through Triton's interpreter when no GPU is present.
"""

import os

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
