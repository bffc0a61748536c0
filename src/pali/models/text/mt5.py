"""mT5 (T5 v1.1) encoder-decoder with exactly the reference semantics.

RMSNorm (eps 1e-6, no mean subtraction, no bias), gated tanh-GELU MLP ``wo(gelu(wi_0 x) * wi_1 x)``
(or the original T5's ``wo(relu(wi x))``, by config),
no biases anywhere, no 1/sqrt(d) attention scaling, one relative-position-bias table per stack
(bidirectional in the encoder, causal in the decoder) shared by all its layers, an untied
``lm_head`` and no logit rescaling. pad = decoder start = 0, eos = 1.

In fp16, T5's MLP outputs exceed 65504. The guard used here: the ``wo`` projection runs in fp32
and every residual sum is clamped to the fp16 range, which keeps fp16 finite where a naive port
produces inf/NaN. bf16 needs no guard.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn
import torch.nn.functional as F
import torch.utils.checkpoint

from ...config.registry import TEXT_STACKS
from ...errors import InputError
from ...generation.kv_cache import KVCache
from ...nn.argmax import masked_first_argmax
from ...nn.attention import Attention, RelativeBias
from ...nn.gemv import compiled_threads, inference_linear, decoding_step
from ...nn.hugepages import collapse_once
from ...nn.joint import adjoin, joint_linear
from .mt5_config import MT5Config

_FP16_LIMIT = torch.finfo(torch.float16).max - 1000


def _clamp_fp16(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(-_FP16_LIMIT, _FP16_LIMIT) if x.dtype == torch.float16 else x


def _dropped(x: torch.Tensor, dropout: nn.Dropout) -> torch.Tensor:
    """``dropout(x)``, without the call when it is the identity (eval mode, or p = 0): a decoding
    step would make 26 such calls per token for nothing."""
    return dropout(x) if dropout.training and dropout.p else x


class RMSNorm(nn.Module):
    """T5's LayerNorm: scale only, no mean subtraction; statistics in fp32."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight  # read once: a module attribute costs a lookup each time
        if x.dtype == weight.dtype == torch.float32 and x.is_cpu and not torch.is_grad_enabled():
            # At inference on a CPU, the same operations in one call (``weight * (x * rsqrt(mean(x^2)
            # + eps))``, bit for bit): 7.5 us instead of 9.4 for one row, 25 calls per mT5-small
            # decoding step. Elsewhere (a GPU's fused kernel, gradients) not: other rounding.
            return F.rms_norm(x, weight.shape, weight, self.eps)
        # The dtype checks skip two no-op conversions per call.
        variance = (x if x.dtype == torch.float32 else x.float()).pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        return weight * (x if x.dtype == weight.dtype else x.to(weight.dtype))


class FeedForward(nn.Module):
    """T5's feed-forward block: ``wo(gelu(wi_0 x) * wi_1 x)`` (gated tanh-GELU: T5 v1.1, mT5,
    Flan-T5, mT0) or ``wo(relu(wi x))`` (the original T5), as ``MT5Config.feed_forward`` says."""

    def __init__(self, d_model: int, d_ff: int, gated: bool = True) -> None:
        super().__init__()
        self.gated = gated
        if gated:
            self.wi_0 = nn.Linear(d_model, d_ff, bias=False)
            self.wi_1 = nn.Linear(d_model, d_ff, bias=False)
        else:
            self.wi = nn.Linear(d_model, d_ff, bias=False)
        self.wo = nn.Linear(d_ff, d_model, bias=False)

    def inputs(self) -> list[nn.Linear]:
        return [self.wi_0, self.wi_1] if self.gated else [self.wi]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            gate, linear = joint_linear(x, self.inputs())
            h = F.gelu(gate, approximate="tanh") * linear
        else:
            h = F.relu(inference_linear(x, self.wi))
        if h.dtype == torch.float16:
            # Run ``wo`` as a module with fp32 copies of all its parameters, so a wrapper around it
            # (a LoRA adapter) takes part instead of being bypassed by a bare ``F.linear``; with
            # autocast off, or fp16 autocast would cast it straight back.
            with torch.autocast(h.device.type, enabled=False):
                params = {name: p.float() for name, p in self.wo.named_parameters()}
                out = torch.func.functional_call(self.wo, params, (h.float(),))
            return out.clamp(-_FP16_LIMIT, _FP16_LIMIT).half()
        weight = getattr(self.wo, "weight", None)  # an int8 layer (pali.quantize) takes any input dtype
        return inference_linear(h if weight is None or not weight.is_floating_point() else h.to(weight.dtype), self.wo)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: MT5Config) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.attn = Attention(cfg.d_model, cfg.num_heads, cfg.d_kv, bias=False, scale=1.0)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = FeedForward(cfg.d_model, cfg.d_ff, cfg.gated)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, bias: RelativeBias, mask: torch.Tensor | None) -> torch.Tensor:
        x = _clamp_fp16(x + _dropped(self.attn(self.attn_norm(x), bias=bias, key_padding_mask=mask), self.dropout))
        return _clamp_fp16(x + _dropped(self.mlp(self.mlp_norm(x)), self.dropout))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: MT5Config) -> None:
        super().__init__()
        self.self_attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg.d_model, cfg.num_heads, cfg.d_kv, bias=False, scale=1.0)
        self.cross_attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.cross_attn = Attention(cfg.d_model, cfg.num_heads, cfg.d_kv, bias=False, scale=1.0)
        self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mlp = FeedForward(cfg.d_model, cfg.d_ff, cfg.gated)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        bias: RelativeBias,
        cross_kv: tuple[torch.Tensor, torch.Tensor],
        enc_mask: torch.Tensor | None,
        cache: KVCache | None = None,
        start: int | torch.Tensor = 0,
        layer: int = 0,
    ) -> torch.Tensor:
        """``start`` is the absolute position of ``x``'s first token (nonzero on a cached step)."""
        store = None if cache is None else functools.partial(cache.write, layer, start)
        attn = self.self_attn(self.self_attn_norm(x), bias=bias, causal=True, q_offset=start, store_kv=store)
        x = _clamp_fp16(x + _dropped(attn, self.dropout))
        attn = self.cross_attn(self.cross_attn_norm(x), cross_kv, key_padding_mask=enc_mask)
        x = _clamp_fp16(x + _dropped(attn, self.dropout))
        return _clamp_fp16(x + _dropped(self.mlp(self.mlp_norm(x)), self.dropout))


class Stack(nn.Module):
    """The layers of the encoder or decoder with their shared bias table and final norm."""

    def __init__(self, cfg: MT5Config, layer_cls: type[nn.Module], num_layers: int, bidirectional: bool) -> None:
        super().__init__()
        self.cfg = cfg
        self.bidirectional = bidirectional
        self.relpos_bias = nn.Parameter(torch.zeros(cfg.num_heads, cfg.num_buckets))
        self.layers = nn.ModuleList(layer_cls(cfg) for _ in range(num_layers))
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.gradient_checkpointing = False
        self.kv_cache: KVCache | None = None  # the decoder's, set up by MT5.start_decoding

    def bias(self) -> RelativeBias:
        return RelativeBias(self.relpos_bias, self.bidirectional, self.cfg.num_buckets, self.cfg.max_distance)

    def run(self, x: torch.Tensor, layer_args: Callable[[int], tuple]) -> torch.Tensor:
        """Apply every layer ``i`` as ``layer(x, *layer_args(i))``, then the final norm."""
        x = _dropped(x, self.dropout)
        checkpoint = self.gradient_checkpointing and self.training and torch.is_grad_enabled()
        if checkpoint:
            # Build the shared dense bias before the checkpointed layers: if the first layer built
            # (and memoized) it, its recomputation would find it cached and save fewer tensors
            # than its forward did, which non-reentrant checkpointing rejects.
            for arg in layer_args(0):
                if isinstance(arg, RelativeBias):
                    arg.dense(x.shape[1], x.shape[1], 0)
        for i, layer in enumerate(self.layers):
            if checkpoint:
                x = torch.utils.checkpoint.checkpoint(layer, x, *layer_args(i), use_reentrant=False)
            else:
                x = layer(x, *layer_args(i))
        return _dropped(self.norm(x), self.dropout)


class MT5(nn.Module):
    """mT5 encoder-decoder over token embeddings; the encoder also accepts foreign embeddings.

    PaLI feeds the encoder ``concat(visual tokens, embedded prompt)``, so ``encode`` takes
    embeddings and a mask rather than token ids.
    """

    config_class = MT5Config

    def __init__(self, cfg: MT5Config) -> None:
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.encoder = Stack(cfg, EncoderLayer, cfg.num_encoder_layers, bidirectional=True)
        self.decoder = Stack(cfg, DecoderLayer, cfg.num_decoder_layers, bidirectional=False)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """T5's initialisation (mesh-tensorflow / t5x), which is why attention needs no scaling."""
        cfg = self.config
        d, inner = cfg.d_model, cfg.num_heads * cfg.d_kv
        nn.init.normal_(self.embed.weight, std=1.0)
        nn.init.normal_(self.lm_head.weight, std=d**-0.5)
        for stack in (self.encoder, self.decoder):
            nn.init.normal_(stack.relpos_bias, std=d**-0.5)
            for module in stack.modules():
                if isinstance(module, Attention):
                    nn.init.normal_(module.q.weight, std=(d * cfg.d_kv) ** -0.5)
                    nn.init.normal_(module.k.weight, std=d**-0.5)
                    nn.init.normal_(module.v.weight, std=d**-0.5)
                    nn.init.normal_(module.o.weight, std=inner**-0.5)
                elif isinstance(module, FeedForward):
                    for wi in module.inputs():
                        nn.init.normal_(wi.weight, std=d**-0.5)
                    nn.init.normal_(module.wo.weight, std=cfg.d_ff**-0.5)

    def fsdp_units(self) -> list[nn.Module]:
        """What ``pali.train.parallel.apply_fsdp`` shards one by one, inner ones first: each decoder
        layer's cross-attention (its keys and values are projected from the encoder output
        before the decoder layers run, once for all steps), then every encoder and decoder layer."""
        return [*(layer.cross_attn for layer in self.decoder.layers), *self.encoder.layers, *self.decoder.layers]

    def check_ids(self, ids: torch.Tensor, what: str) -> None:
        if ids.dim() != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise InputError(f"{what} must be an integer tensor [B, T], got {ids.dtype} {list(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size):
            raise InputError(
                f"{what} holds ids outside [0, {self.config.vocab_size}): "
                f"min {int(ids.min())}, max {int(ids.max())}"
            )

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        self.check_ids(ids, "input_ids")
        return self.embed(ids)

    def encode(self, embeds: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Bidirectional encoder over ``[B, L, d_model]``; ``mask`` ``[B, L]`` is True for real tokens."""
        bias = self.encoder.bias()
        return self.encoder.run(embeds, lambda i: (bias, mask))

    def decode(
        self, decoder_input_ids: torch.Tensor, encoder_hidden: torch.Tensor, enc_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Logits ``[B, T, V]`` for every decoder position at once (training, scoring, and the
        uncached reference of ``decode_step``)."""
        self.check_ids(decoder_input_ids, "decoder_input_ids")
        cross_kv = [layer.cross_attn.project_kv(encoder_hidden) for layer in self.decoder.layers]
        bias = self.decoder.bias()
        x = self.decoder.run(self.embed(decoder_input_ids), lambda i: (bias, cross_kv[i], enc_mask))
        return self.lm_head(x)

    def start_decoding(self, encoder_hidden: torch.Tensor, enc_mask: torch.Tensor | None, max_len: int) -> KVCache:
        """Fill the decoder's ``KVCache`` for a generation of up to ``max_len`` tokens.

        On a CPU, the decoder layers' projections that read one input are laid out together, to be
        multiplied as one product (``pali.nn.joint``), and the weights every step streams go onto
        2 MB pages, both on the first call
        (``pali.nn.hugepages``: a one-time copy, 0.8 s for mT5's 486 MB output layer on the
        machine measured; the output layer's product then took 1.15x less time). The
        cross-attention keys/values are projected once here; the self-attention buffers are
        preallocated (reused when called again with the same shapes; ``generate`` releases them
        when it ends, and a compiled ``decode_step`` takes new buffers of the same shapes as
        inputs, without recompiling).
        """
        cfg = self.config
        if encoder_hidden.device.type == "cpu":
            for layer in self.decoder.layers:  # each group as one product (``pali.nn.joint``)
                for group in (layer.self_attn.inputs(), [layer.cross_attn.k, layer.cross_attn.v], layer.mlp.inputs()):
                    adjoin(group)
            collapse_once((self.decoder.layers, self.lm_head))  # the weights every step streams
        cross = [layer.cross_attn.project_kv(encoder_hidden) for layer in self.decoder.layers]
        cache = self.decoder.kv_cache
        if cache is None:
            cache = self.decoder.kv_cache = KVCache()
        cache.allocate(cfg.num_decoder_layers, encoder_hidden.shape[0], cfg.num_heads, max_len, cfg.d_kv,
                       dtype=cross[0][0].dtype, device=encoder_hidden.device)
        cache.set_cross(cross, enc_mask)
        return cache

    def decode_step(self, ids: torch.Tensor, start: int | torch.Tensor) -> torch.Tensor:
        """Logits ``[B, t, V]`` for ``t`` new decoder tokens at positions ``start ..`` (an int or a
        0-d CPU tensor, read once here), written into the cache ``start_decoding`` filled.

        On a CPU every weight of a step of a few rows, the output layer included, is read by every
        thread (``pali.nn.gemv``).
        """
        return self._step(ids, start, self._eager_hidden, self._logits)

    def decode_argmax(self, ids: torch.Tensor, start: int | torch.Tensor,
                      suppressed: torch.Tensor | None = None) -> torch.Tensor:
        """Greedy's choice ``[B]`` after ``decode_step(ids, start)``: the first maximum of the last
        position's logits, the ids in ``suppressed`` (an index tensor) never chosen. An output
        layer with an ``argmax`` of its own (``pali.nn.screen.ScreenedLinear``, which
        ``pali.quantize(model, "fp32")`` installs) finds it without computing every logit."""
        return self._step(ids, start, self._eager_hidden, functools.partial(self._argmax, suppressed=suppressed))

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return inference_linear(hidden, self.lm_head)

    def _argmax(self, hidden: torch.Tensor, suppressed: torch.Tensor | None) -> torch.Tensor:
        last = hidden[:, -1]
        choose = getattr(self.lm_head, "argmax", None)
        if choose is not None:
            return choose(last, suppressed)
        return masked_first_argmax(self._logits(last).float(), suppressed)

    def _eager_hidden(self, ids: torch.Tensor, position: int) -> torch.Tensor:
        """The eager step's layers, their small weights split across threads as well."""
        with decoding_step():
            return self.decode_hidden(ids, position)

    def compiled_decode_step(self, argmax: bool = False) -> Callable[..., torch.Tensor]:
        """``decode_step`` (``argmax``: ``decode_argmax``) with the decoder layers compiled
        (``torch.compile`` of ``decode_hidden``, the position a 0-d tensor: one graph per batch
        size and cache length, never per token).

        The compiled layers split their weights across threads as the eager ones do (see
        ``pali.nn.gemv``); the output layer stays eager: on a CPU, inductor's graph of the whole
        step decoded at half the eager step's speed, its output layer being the plain ``F.linear``.
        """
        compiled_threads()
        layers = torch.compile(self.decode_hidden)

        def hidden(ids: torch.Tensor, position: int) -> torch.Tensor:
            return layers(ids.contiguous(), torch.tensor(position))

        if argmax:
            return lambda ids, start, suppressed=None: self._step(
                ids, start, hidden, functools.partial(self._argmax, suppressed=suppressed))
        return lambda ids, start: self._step(ids, start, hidden, self._logits)

    def _step(self, ids: torch.Tensor, start: int | torch.Tensor,
              hidden: Callable[[torch.Tensor, int], torch.Tensor],
              head: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """A step with ``hidden`` (eager or compiled layers): the cache checked once, then the
        layers and ``head`` (the logits, or greedy's choice)."""
        cache = self.decoder.kv_cache
        if cache is None or not cache.allocated:
            raise InputError("decode_step needs start_decoding first (no KV cache)")
        position = int(start)
        cache.check_room(position, ids.shape[1])
        return head(hidden(ids, position))

    def decode_hidden(self, ids: torch.Tensor, start: int | torch.Tensor) -> torch.Tensor:
        """The decoder's last hidden states ``[B, t, d_model]`` for new tokens at ``start ..``.

        An int ``start`` attends over the filled cache only; a 0-d tensor over the whole buffer,
        causal from ``start`` (``KVCache.write``): the same shapes at every position, the form
        ``compiled_decode_step`` compiles once.
        """
        cache = self.decoder.kv_cache
        bias = self.decoder.bias()
        cross_kv = cache.cross_kv()
        return self.decoder.run(self.embed(ids), lambda i: (bias, cross_kv[i], cache.enc_mask, cache, start, i))


TEXT_STACKS.register(MT5Config.kind, MT5)
