"""``pali.nn.hugepages``: weights moved onto 2 MB pages where they lie, values and addresses kept."""

from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

from pali.nn import hugepages, quantize as nn_quantize
from pali.nn.quantize import PackedLinear

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="2 MB pages through madvise are Linux's")


def _huge_kib() -> int:
    """This process's memory on 2 MB pages, in KiB (``/proc/self/smaps_rollup``)."""
    with open("/proc/self/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("AnonHugePages:"))


def _collapsed_or_skip(tensor: torch.Tensor) -> None:
    if not hugepages.collapse(tensor):
        pytest.skip("this kernel does not collapse memory onto 2 MB pages (MADV_COLLAPSE: Linux 6.1+)")


@linux
def test_collapse_moves_a_tensor_onto_huge_pages_in_place():
    tensor = torch.randn(3 * hugepages.HUGE_PAGE // 4)  # 6 MB: at least two whole 2 MB pages inside
    before, address, values = _huge_kib(), tensor.data_ptr(), tensor.clone()
    _collapsed_or_skip(tensor)
    assert _huge_kib() - before >= 2 * hugepages.HUGE_PAGE // 1024
    assert tensor.data_ptr() == address and torch.equal(tensor, values)
    assert hugepages.collapse(tensor)  # already there: still True


@linux
def test_packed_weights_go_onto_huge_pages():
    if not nn_quantize.can_pack():
        pytest.skip("this torch cannot pack weights for oneDNN")
    layer = nn.Linear(1024, 2048, bias=False)  # 8 MB
    probe = torch.randn(3 * hugepages.HUGE_PAGE // 4)
    _collapsed_or_skip(probe)
    before = _huge_kib()
    packed = PackedLinear(layer, torch.float32)
    assert _huge_kib() - before >= 2 * hugepages.HUGE_PAGE // 1024
    x = torch.randn(3, 1024)
    with torch.no_grad():
        torch.testing.assert_close(packed(x), layer(x), rtol=1e-5, atol=1e-5)


def test_what_cannot_be_collapsed_says_so():
    """Less than a whole 2 MB page, a quantized tensor, a tensor off the CPU: False, untouched."""
    small = torch.ones(1000)
    assert not hugepages.collapse(small) and torch.equal(small, torch.ones(1000))
    quantized = torch.quantize_per_tensor(torch.ones(2**21), 0.1, 0, torch.qint8)
    assert not hugepages.collapse(quantized)
    assert not hugepages.collapse(torch.ones(2**21, device="meta"))


def test_collapse_once_asks_once_per_tensor(monkeypatch):
    """A tensor already collapsed is skipped; a new tensor (even at a reused address) is not;
    tensors smaller than a 2 MB page are never asked about."""
    asked = []
    monkeypatch.setattr(hugepages, "collapse", lambda t: asked.append(t) or True)
    layer = nn.Linear(1024, 1024)  # a 4 MB weight and a 4 KB bias
    hugepages.collapse_once([layer])
    hugepages.collapse_once([layer])
    assert [t is layer.weight for t in asked] == [True]
    layer.weight = nn.Parameter(torch.randn(1024, 1024))
    hugepages.collapse_once([layer])
    assert len(asked) == 2 and asked[1] is layer.weight


def test_decoding_collapses_the_weights_each_step_streams(monkeypatch):
    """mT5's first generation on a CPU asks for its decoder layers' and output layer's weights on
    2 MB pages: not the embedding (one row a token) nor the KV cache (new every generation)."""
    from pali.models.text.mt5_config import MT5Config
    from pali.models.text.mt5 import MT5

    asked = []
    monkeypatch.setattr(hugepages, "collapse", lambda t: asked.append(t) or True)
    text = MT5(MT5Config(vocab_size=8192, d_model=128, d_ff=4096, num_heads=2, d_kv=16,
                         num_encoder_layers=1, num_decoder_layers=2)).eval()
    with torch.no_grad():
        hidden = text.encode(text.embed_tokens(torch.randint(0, 8192, (2, 5))))
        for _ in range(2):
            text.start_decoding(hidden, None, 4)
            text.decode_step(torch.zeros(2, 1, dtype=torch.long), 0)
    expected = [text.lm_head.weight, *(layer.mlp.wi_0.weight for layer in text.decoder.layers)]
    assert {id(t) for t in asked} >= {id(t) for t in expected}
    assert len(asked) == len({id(t) for t in asked})  # each once, over two generations
    assert not any(t is text.embed.weight for t in asked)
