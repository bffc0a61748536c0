"""Peak memory of from_pretrained: the weights once, never twice (measured in a fresh process)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from pali import PaliConfig, PaliModel, get_config
from pali.io import write_safetensors

# Peak resident size from /proc (VmHWM), not getrusage's ru_maxrss: Linux carries ru_maxrss over
# from the forking parent (pytest, which just wrote the weights), VmHWM belongs to this process.
_MEASURE = """
import sys
import torch, pali, pali.io.loading, pali.hub.download  # imports are the baseline, not the load
def peak():
    return int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) * 1024
base = peak()
model = pali.PaliModel.from_pretrained(sys.argv[1])
print(peak() - base, sum(p.numel() * p.element_size() for p in model.parameters()))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_from_pretrained_peak_memory_stays_below_one_and_a_half_weights(tmp_path):
    # mT5-small-shaped text stack (250k vocabulary) + a tiny ViT, bf16: ~600 MB of weights.
    config = PaliConfig(vision=get_config("vit-tiny"), text=get_config("mt5-small"))
    with torch.device("meta"):
        shapes = {name: t.shape for name, t in PaliModel(config).state_dict().items()}
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(config.to_json())
    write_safetensors(((n, torch.randn(s).to(torch.bfloat16)) for n, s in shapes.items()), folder,
                      max_shard_size="200MB")
    weights = sum(s.numel() * 2 for s in shapes.values())
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(folder)], capture_output=True, text=True, check=True)
    grown, loaded = (int(v) for v in out.stdout.split())
    assert loaded == weights
    assert grown < 1.5 * weights, f"peak grew {grown / 2**20:.0f} MiB for {weights / 2**20:.0f} MiB of weights"
    print(f"from_pretrained: weights {weights / 2**20:.0f} MiB, peak RSS growth {grown / 2**20:.0f} MiB")
