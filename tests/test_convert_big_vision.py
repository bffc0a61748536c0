"""big_vision .npz checkpoints (written here with np.savez, as big_vision does) -> our ViT."""

import re
import zipfile

import numpy as np
import pytest
import torch

from pali.testing.big_vision import big_vision_names
from pali.testing.hf_reference import hf_siglip
from pali.testing.checkpoints import read_safetensors
from pali.convert import convert_big_vision, detect_format, load_config, read_big_vision, verify
from pali.errors import CheckpointError
from pali.models.vision.vit import ViT, resample_pos_embed


def as_v2(a: np.ndarray) -> np.ndarray:
    """A bf16 copy stored the way big_vision's np.savez stores bf16: void 'V2' holding the bits."""
    return torch.from_numpy(a).to(torch.bfloat16).view(torch.int16).numpy().view("V2")


def scan(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The nn.scan layout: one encoderblock with a leading depth axis."""
    out, blocks = {}, {}
    for name, a in arrays.items():
        m = re.fullmatch(r"Transformer/encoderblock_(\d+)/(.*)", name)
        if m:
            blocks.setdefault(m[2], {})[int(m[1])] = a
        else:
            out[name] = a
    for rest, layers in blocks.items():
        out[f"Transformer/encoderblock/{rest}"] = np.stack([layers[i] for i in sorted(layers)])
    return out


@pytest.fixture(scope="module")
def siglip():
    hf = hf_siglip(seed=2)
    return hf, big_vision_names(hf.state_dict(), heads=4)


def _npz(path, arrays, prefix=""):
    np.savez(path, **{prefix + k: v for k, v in arrays.items()})
    return path


def test_siglip_npz_matches_hf_outputs(siglip, tmp_path):
    hf, arrays = siglip
    arrays = dict(arrays, **{"MAPHead_0/probe": np.zeros((1, 1, 32), np.float32)})
    src = _npz(tmp_path / "siglip.npz", arrays, prefix="params/")
    assert detect_format(src) == "big_vision"
    out = tmp_path / "vit"
    convert_big_vision(src, out, verify=True)
    ours = ViT(load_config(out)).eval()
    ours.load_state_dict(dict(read_safetensors(out)))
    px = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        diff = (ours(px) - hf(pixel_values=px).last_hidden_state).abs().max().item()
    assert diff <= 1e-5
    assert verify(src, out) == len(ours.state_dict())


def test_scanned_layout_equals_loop_layout(siglip, tmp_path):
    _, arrays = siglip
    loop = read_big_vision(_npz(tmp_path / "loop.npz", arrays)).state_dict()
    scanned = read_big_vision(_npz(tmp_path / "scan.npz", scan(arrays))).state_dict()
    assert loop.keys() == scanned.keys()
    assert all(torch.equal(loop[k], scanned[k]) for k in loop)


def test_bf16_void_arrays_round_trip_bit_exact(siglip, tmp_path):
    _, arrays = siglip
    src = _npz(tmp_path / "bf16.npz", {k: as_v2(v) for k, v in arrays.items()})
    fp32 = read_big_vision(_npz(tmp_path / "fp32.npz", arrays)).state_dict()
    bf16 = read_big_vision(src).state_dict()
    for name, t in bf16.items():
        assert t.dtype == torch.bfloat16
        assert torch.equal(t.view(torch.int16), fp32[name].to(torch.bfloat16).view(torch.int16)), name
    out = tmp_path / "out"
    scanned_bf16 = scan({k: as_v2(v) for k, v in arrays.items()})
    convert_big_vision(_npz(tmp_path / "bf16scan.npz", scanned_bf16), out, verify=True)
    written = dict(read_safetensors(out))
    assert all(torch.equal(written[k].view(torch.int16), bf16[k].view(torch.int16)) for k in bf16)


def test_two_tower_selector_head_as_projection_and_resample(siglip, tmp_path):
    _, arrays = siglip
    head = np.random.default_rng(0).standard_normal((32, 48)).astype(np.float32)  # [D_vis, d_model]
    towers = {**{f"img/{k}": v for k, v in arrays.items()}, "img/head/kernel": head,
              "img/head/bias": np.ones(48, np.float32), "txt/Encoder_0/foo": np.zeros(3, np.float32)}
    src = _npz(tmp_path / "two.npz", towers, prefix="params/")
    auto = read_big_vision(src).state_dict()
    explicit = read_big_vision(f"{src}:img", image_size=48)
    assert torch.equal(auto["projection.weight"], torch.from_numpy(head).t())
    assert explicit.config.image_size == 48
    sd = explicit.state_dict()
    assert sd["pos_embed"].shape == (1, 36, 32)
    assert torch.equal(sd["pos_embed"], resample_pos_embed(auto["pos_embed"], 6))
    out = tmp_path / "out"
    convert_big_vision(f"{src}:img", out, image_size=48, dtype="bf16", verify=True)
    assert verify(f"{src}:img", out) == len(sd)
    with pytest.raises(CheckpointError, match="no arrays under 'nope'"):
        read_big_vision(f"{src}:nope")


def test_truncated_npz(siglip, tmp_path):
    _, arrays = siglip
    src = _npz(tmp_path / "t.npz", arrays)
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable .npz"):
        read_big_vision(src)


def test_corrupt_npz_member_fails_crc(siglip, tmp_path):
    _, arrays = siglip
    src = _npz(tmp_path / "c.npz", arrays)
    with zipfile.ZipFile(src) as z:
        info = z.getinfo("Transformer/encoderblock_1/MlpBlock_0/Dense_0/kernel.npy")
    data = bytearray(src.read_bytes())
    data[info.header_offset + 600] ^= 0xFF  # inside the array data
    src.write_bytes(bytes(data))
    read_big_vision(src)  # headers are intact: planning succeeds, reading the member fails
    out = tmp_path / "out"
    with pytest.raises(CheckpointError, match="Dense_0/kernel.*truncated or corrupt"):
        convert_big_vision(src, out)
    assert not out.exists()


def test_unknown_tensors_listed_and_preset_mismatch(siglip, tmp_path):
    _, arrays = siglip
    src = _npz(tmp_path / "u.npz", {**arrays, "cls": np.zeros((1, 1, 32), np.float32)})
    with pytest.raises(CheckpointError, match=r"unexpected tensors: \['cls'\]"):
        read_big_vision(src)
    ok = _npz(tmp_path / "ok.npz", arrays)
    with pytest.raises(CheckpointError) as e:
        read_big_vision(ok, vision_preset="vit-b16")
    assert ("patch_embed.weight (from 'embedding/kernel'): checkpoint gives [32, 3, 8, 8], "
            "preset 'vit-b16' expects [768, 3, 16, 16]") in str(e.value)
    assert read_big_vision(ok, vision_preset="vit-tiny").config.image_size == 32
    with pytest.raises(CheckpointError, match="cannot infer"):
        read_big_vision(_npz(tmp_path / "e.npz", {"foo": np.zeros(2, np.float32)}))
