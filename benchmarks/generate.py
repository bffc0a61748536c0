"""Generation speed: pali against the same weights in Hugging Face transformers, and the floor.

A PaLI of SigLIP-B/16 (224 px, 196 visual tokens) + mT5-small shape (vocab 250112) with random
weights is built twice: as transformers modules (``SiglipVisionModel`` -> linear ->
``MT5ForConditionalGeneration.generate(inputs_embeds=...)``) and as a ``PaliModel`` loaded from
them through ``pali.convert.hf``'s key maps. Both must produce the same tokens; then each row
times greedy captioning (batch 1 and 8) and beam search (4 beams), ours and theirs interleaved
rep by rep so machine noise hits both, and prints tokens/s, the ratio, and the floor: the output
layer's matmul alone per decoding step (mT5's 250k-word ``lm_head`` reads 0.5 GB per step), with
our per-step decode time as a multiple of it. A last row shows the lever for more speed, a bf16
output layer, and how many tokens it changes.

    python benchmarks/generate.py            # full size, fp32, CPU
    python benchmarks/generate.py --quick    # tiny sizes, one repetition (tests run this)
    python benchmarks/generate.py --device cuda   # the same rows on a GPU (tokens compared, not required equal)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
import transformers
from torch import nn

from pali import PaliConfig, PaliModel

from pali.testing.checkpoints import apply_keymap  # noqa: E402
from pali.convert import hf as hf_maps

FULL = dict(
    vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                image_size=224, patch_size=16),
    text=dict(vocab_size=250112, d_model=512, d_kv=64, d_ff=1024, num_layers=8, num_decoder_layers=8, num_heads=6),
    prompt=10, new_tokens=32, reps=5,
)
QUICK = dict(
    vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                image_size=32, patch_size=8),
    text=dict(vocab_size=256, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4),
    prompt=5, new_tokens=8, reps=1,
)
ROWS = [("greedy", 1, 1), ("greedy", 8, 1), ("beam", 1, 4)]  # (name, batch, beams)


def hf_configs(sizes: dict):
    vision = transformers.SiglipVisionConfig(**sizes["vision"], hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6)
    text = transformers.MT5Config(**sizes["text"], dropout_rate=0.0, feed_forward_proj="gated-gelu")
    return vision, text


def pali_config(sizes: dict) -> PaliConfig:
    vision, text = hf_configs(sizes)
    return PaliConfig(vision=hf_maps.siglip_vision_config(vision.to_dict()), text=hf_maps.mt5_config(text.to_dict()))


class Reference(nn.Module):
    """The transformers assembly PaLI users would write by hand."""

    def __init__(self, sizes: dict) -> None:
        super().__init__()
        vision_cfg, text_cfg = hf_configs(sizes)
        self.sizes = sizes
        self.vision = transformers.SiglipVisionModel(vision_cfg)
        self.text = transformers.MT5ForConditionalGeneration(text_cfg)
        d, vocab = sizes["text"]["d_model"], sizes["text"]["vocab_size"]
        # mT5 is untied; transformers 5 ties it by default (issue 48154): give the head its own weights.
        self.text.lm_head.weight = nn.Parameter(torch.randn(vocab, d) * d**-0.5)
        self.projection = nn.Linear(sizes["vision"]["hidden_size"], d)

    @torch.no_grad()
    def generate(self, pixel_values, input_ids, attention_mask, **kwargs):
        visual = self.projection(self.vision(pixel_values=pixel_values).last_hidden_state)
        embeds = torch.cat([visual, self.text.shared(input_ids)], dim=1)
        ones = torch.ones(visual.shape[:2], dtype=attention_mask.dtype, device=attention_mask.device)
        mask = torch.cat([ones, attention_mask], dim=1)
        out = self.text.generate(inputs_embeds=embeds, attention_mask=mask, do_sample=False, **kwargs)
        return out[:, 1:]  # transformers keeps the decoder start token


def ours_from(ref: Reference) -> PaliModel:
    model = PaliModel(pali_config(ref.sizes)).eval()
    state = {f"vision.{k}": v for k, v in apply_keymap(hf_maps.SIGLIP_VISION, ref.vision.state_dict().items())}
    state |= {f"text.{k}": v for k, v in apply_keymap(hf_maps.MT5, ref.text.state_dict().items())}
    state |= {f"projection.{k}": v for k, v in ref.projection.state_dict().items()}
    model.load_state_dict(state)
    return model


class Bf16Head(nn.Module):
    """The lever: the output layer's weights in bf16 (half the bytes read per step), fp32 logits."""

    def __init__(self, head: nn.Linear) -> None:
        super().__init__()
        self.weight = nn.Parameter(head.weight.detach().to(torch.bfloat16), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.bfloat16), self.weight).float()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> tuple[float, object]:
    """Wall time of ``fn``, waiting for queued GPU work on both sides."""
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - start, out


def inputs(sizes: dict, batch: int, device: torch.device):
    g = torch.Generator().manual_seed(batch)
    size = sizes["vision"]["image_size"]
    px = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    ids = torch.randint(2, sizes["text"]["vocab_size"], (batch, sizes["prompt"]), generator=g)
    mask = torch.ones_like(ids)
    mask[batch // 2 :, sizes["prompt"] // 2 :] = 0  # half the batch carries prompt padding
    return px.to(device), ids.to(device), mask.to(device)


def floor_per_step(model: PaliModel, rows: int, reps: int) -> float:
    """Seconds of the output-layer matmul alone for one decoding step over ``rows`` sequences."""
    head = model.text.lm_head
    x = torch.randn(rows, 1, model.config.text.d_model, device=head.weight.device)
    head(x)
    return statistics.median(timed(lambda: head(x))[0] for _ in range(max(5, reps * 3)))


def run_row(ours, ref, sizes, name, batch, beams, reps):
    px, ids, mask = inputs(sizes, batch, ours.projection.weight.device)
    kwargs = dict(max_new_tokens=sizes["new_tokens"], num_beams=beams)
    with torch.no_grad():
        expected = ref.generate(px, ids, mask, **kwargs)
        got = ours.generate(px, ids, mask, **kwargs)
    if not torch.equal(got, expected):
        message = f"{name} b{batch}: tokens differ from transformers\nours   {got}\ntheirs {expected}"
        if px.device.type == "cpu":
            raise SystemExit(message)
        # On a GPU both sides use different fused kernels: near-tied logits of random weights may
        # flip a token. Report it; the CPU run is the exactness check.
        print(message)
    steps = got.shape[1]
    t_ours, t_ref, t_enc = [], [], []
    for _ in range(reps):  # interleaved: noise from other processes hits both
        t_ours.append(timed(lambda: ours.generate(px, ids, mask, **kwargs))[0])
        t_ref.append(timed(lambda: ref.generate(px, ids, mask, **kwargs))[0])
        with torch.no_grad():
            t_enc.append(timed(lambda: ours.encode(px, ids, mask))[0])
    ours_s, ref_s, enc_s = (statistics.median(t) for t in (t_ours, t_ref, t_enc))
    floor = floor_per_step(ours, batch * beams, reps)
    decode_step = (ours_s - enc_s) / steps
    tokens = batch * steps
    return dict(
        row=f"{name} b{batch}" + (f" x{beams} beams" if beams > 1 else ""), steps=steps,
        ours_tps=tokens / ours_s, ref_tps=tokens / ref_s, ratio=ref_s / ours_s,
        floor_ms=floor * 1e3, decode_ms=decode_step * 1e3, vs_floor=decode_step / floor,
    )


def bf16_lever(ours, sizes, reps):
    """Greedy batch 1 with a bf16 output layer: speed and how many tokens change."""
    px, ids, mask = inputs(sizes, 1, ours.projection.weight.device)
    kwargs = dict(max_new_tokens=sizes["new_tokens"])
    head = ours.text.lm_head
    fp32_tokens = ours.generate(px, ids, mask, **kwargs)
    t_fp32, t_bf16 = [], []
    for _ in range(reps):
        t_fp32.append(timed(lambda: ours.generate(px, ids, mask, **kwargs))[0])
        ours.text.lm_head = Bf16Head(head)
        t, bf16_tokens = timed(lambda: ours.generate(px, ids, mask, **kwargs))
        t_bf16.append(t)
        ours.text.lm_head = head
    n = min(fp32_tokens.shape[1], bf16_tokens.shape[1])
    differ = int((fp32_tokens[:, :n] != bf16_tokens[:, :n]).sum()) + abs(fp32_tokens.shape[1] - bf16_tokens.shape[1])
    first = (fp32_tokens[0, :n] != bf16_tokens[0, :n]).nonzero()
    return dict(speedup=statistics.median(t_fp32) / statistics.median(t_bf16), differ=differ, total=fp32_tokens.numel(),
                first_diff=int(first[0]) if len(first) else None)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one repetition")
    parser.add_argument("--reps", type=int, help="repetitions per row (median reported)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--attention", default="auto", choices=["auto", "eager", "sdpa", "triton"],
                        help="our attention backend (auto: the fused kernels on CUDA, SDPA elsewhere)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    sizes = QUICK if args.quick else FULL
    reps = args.reps or sizes["reps"]
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    ref = Reference(sizes).eval()
    ours = ours_from(ref).to(device).set_attention_backend(args.attention)
    ref.to(device)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {where}, "
          f"fp32, our attention {args.attention}, {sizes['new_tokens']} new tokens, median of {reps}, ours/theirs interleaved")
    print(f"{'row':<22}{'steps':>6}{'ours tok/s':>12}{'hf tok/s':>10}{'ratio':>8}{'floor ms':>10}"
          f"{'ours ms/step':>14}{'x floor':>9}")
    for name, batch, beams in ROWS:
        r = run_row(ours, ref, sizes, name, batch, beams, reps)
        print(f"{r['row']:<22}{r['steps']:>6}{r['ours_tps']:>12.1f}{r['ref_tps']:>10.1f}"
              f"{r['ratio']:>7.2f}x{r['floor_ms']:>10.1f}{r['decode_ms']:>14.1f}{r['vs_floor']:>8.2f}x")
        print(f"  ratio vs transformers: {r['ratio']:.2f}x")
    lever = bf16_lever(ours, sizes, reps)
    print(f"bf16 output layer (greedy b1): {lever['speedup']:.2f}x faster than fp32; "
          f"{lever['differ']}/{lever['total']} tokens differ (first at {lever['first_diff']})")


if __name__ == "__main__":
    main()
