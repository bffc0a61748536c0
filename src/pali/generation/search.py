"""Decoding strategies over an encoder-decoder: greedy, sampling and beam search.

``decoding`` builds, for one generation, what every strategy shares (``Decoding``):
``step(new_tokens, position)`` gives the next-token logits given the newest tokens only, and
``reorder(index)`` keeps the batch rows that beam search selects. The step runs the decoder on
the newest token over its KV cache (optionally compiled), or, with ``use_cache=False``,
recomputes the whole prefix: the reference the cached step is tested against. ``next_logits``
is the one place where a step's logits are turned into the scores a strategy chooses from;
greedy decoding over a text stack with ``decode_argmax`` asks the stack for the token instead
(``Decoding.argmax``: the same first maximum, suppressed ids left out, which an output layer
may find without computing every logit). Beam search follows Hugging Face transformers'
vectorized algorithm (top ``2K`` candidates, length-normalized finished hypotheses, the same
early-stop heuristic), so both give the same beams.
"""

from __future__ import annotations

import functools

from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, NamedTuple

import torch

from ..defaults import MAX_NEW_TOKENS
from ..errors import InputError
from ..nn.argmax import first_argmax

_NEG = -1.0e9


@dataclass
class GenerationConfig:
    """How [`pali.PaliModel.generate`][] decodes; keywords given to ``generate`` override fields.

    ``eos_token_id`` and ``pad_token_id`` default (None) to the model's text config.
    ``use_cache=False`` recomputes the whole prefix every step (same tokens, slower); ``compile``
    runs the cached step through ``torch.compile`` (once per batch size and length, never per
    token; mT5 compiles its decoder layers and keeps the output layer eager).
    ``suppress_tokens`` (transformers' name) are ids never generated: their logits are masked
    out in every step, e.g. the rows of an embedding table padded past the tokenizer (Flan-T5's
    32128 rows for 32100 pieces), which the pipeline suppresses by itself.
    """

    max_new_tokens: int = MAX_NEW_TOKENS
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    length_penalty: float = 1.0
    early_stopping: bool = False
    eos_token_id: int | None = None
    pad_token_id: int | None = None
    use_cache: bool = True
    compile: bool = False
    suppress_tokens: tuple[int, ...] | None = None

    def updated(self, **overrides: Any) -> "GenerationConfig":
        """A copy with ``overrides`` applied; an unknown name raises [`InputError`][pali.InputError]."""
        names = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise InputError(
                f"unknown generation option(s) {', '.join(map(repr, unknown))}; "
                f"GenerationConfig has {', '.join(sorted(names))}"
            )
        return replace(self, **overrides)

    def validate(self) -> None:
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_beams < 1:
            raise InputError(f"num_beams must be >= 1, got {self.num_beams}")
        if self.do_sample and self.num_beams > 1:
            raise InputError("do_sample with num_beams > 1 (beam sampling) is not supported")
        if self.temperature <= 0:
            raise InputError(f"temperature must be > 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise InputError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.compile and not self.use_cache:
            raise InputError("compile=True needs use_cache=True (the compiled step is the cached one)")
        if self.suppress_tokens is not None and not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.suppress_tokens
        ):
            raise InputError(f"suppress_tokens must be token ids (ints >= 0), got {self.suppress_tokens!r}")


class Decoding(NamedTuple):
    """What one generation decodes with (``decoding``).

    ``step(new_tokens, position)`` -> logits ``[B, 1, V]`` after the decoder tokens so far, given
    only the newest ones ``[B, 1]`` at ``position`` (the start token is position 0): a strategy
    never builds the prefix. ``reorder(index)`` keeps the batch rows beam search selects.
    ``argmax(new_tokens, position)`` -> ``[B]``, where the text stack offers it
    (``decode_argmax``) and the strategy is greedy: the first maximum of ``next_logits`` at the
    same step, which the output layer may find without computing every logit; else None.
    """

    step: Callable[[torch.Tensor, int], torch.Tensor]
    reorder: Callable[[torch.Tensor], None]
    argmax: Callable[[torch.Tensor, int], torch.Tensor] | None = None


@contextmanager
def decoding(text, encoder_hidden: torch.Tensor, mask: torch.Tensor | None, cfg: GenerationConfig):
    """One generation's ``Decoding`` over a text stack (``decode``, ``start_decoding``,
    ``decode_step``, optionally ``decode_argmax``); on exit the KV cache's buffers are released.

    The cached step runs the decoder over the KV cache (optionally compiled); ``use_cache=False``
    keeps the prefix itself in one preallocated buffer and recomputes it whole every step, the
    reference the cached step is tested against.
    """
    if not cfg.use_cache:
        held = {"hidden": encoder_hidden, "mask": mask}
        prefix = torch.empty(encoder_hidden.shape[0], cfg.max_new_tokens + 1, dtype=torch.long,
                             device=encoder_hidden.device)

        def step(new_tokens, position):
            prefix[:, position : position + 1] = new_tokens
            return text.decode(prefix[:, : position + 1], held["hidden"], held["mask"])[:, -1:]

        def reorder(index):
            prefix.copy_(prefix.index_select(0, index))
            held["hidden"] = held["hidden"].index_select(0, index)
            held["mask"] = None if held["mask"] is None else held["mask"].index_select(0, index)

        yield Decoding(step, reorder)
        return

    cache = text.start_decoding(encoder_hidden, mask, cfg.max_new_tokens)
    filled = [0]

    def cached(decode):
        def call(new_tokens, position):
            filled[0] = position + 1
            return decode(new_tokens, position)
        return call

    argmax = None
    if cfg.num_beams == 1 and not cfg.do_sample and hasattr(text, "decode_argmax") and (
        not cfg.compile or hasattr(text, "compiled_decode_step")
    ):
        suppressed = None
        if cfg.suppress_tokens:
            suppressed = _suppressed(tuple(cfg.suppress_tokens), text.config.vocab_size, encoder_hidden.device)
        choose = text.compiled_decode_step(argmax=True) if cfg.compile else text.decode_argmax

        def choose_step(new_tokens, position):
            return choose(new_tokens, position, suppressed)

        argmax = cached(_guarded_once(choose_step) if cfg.compile else choose_step)
    decode_step = _guarded_once(_compiled_step(text)) if cfg.compile else text.decode_step
    try:
        yield Decoding(cached(decode_step), lambda index: cache.reorder(index, filled[0]), argmax)
    finally:
        release = getattr(cache, "release", None)  # a plugin's cache may not hold buffers
        if release is not None:
            release()


def _compiled_step(text) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """The text stack's own compiled step (``compiled_decode_step``: it compiles what pays), else
    its whole ``decode_step`` compiled. The latter takes the position as a 0-d CPU tensor, so it
    never specializes on it, and contiguous ids (a column of a larger buffer has other strides:
    a recompile)."""
    own = getattr(text, "compiled_decode_step", None)
    if own is not None:
        return own()
    whole = torch.compile(text.decode_step)
    return lambda ids, position: whole(ids.contiguous(), torch.tensor(position))


def _guarded_once(step: Callable[[torch.Tensor, int], torch.Tensor]) -> Callable[[torch.Tensor, int], torch.Tensor]:
    """``step`` with torch.compile's guards checked on its first call only.

    The guards (every parameter, buffer and module flag the graph read: 0.35 ms per call for
    mT5-small's decoder, 3% of a greedy step) pick the graph for this generation's batch size,
    cache length and model on the first step. The later steps of the same generation call it
    with the same module, the same cache tensors (beam search reorders them in place) and ids of
    the same shape, so they skip the checks that cannot fail (``skip_guard_eval_unsafe``; guards
    that tell apart several compiled graphs still run).
    """
    first = [True]

    def call(new_tokens, position):
        if first[0]:
            first[0] = False
            return step(new_tokens, position)
        with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
            return step(new_tokens, position)

    return call


def next_logits(step: Callable[[torch.Tensor, int], torch.Tensor], new: torch.Tensor, position: int,
                cfg: GenerationConfig) -> torch.Tensor:
    """The fp32 logits ``[rows, V]`` every strategy chooses the token at ``position + 1`` from:
    the one place logits are processed, so greedy, sampling and beam search all see
    ``cfg.suppress_tokens`` masked to -inf."""
    logits = step(new, position)[:, -1].float()
    if cfg.suppress_tokens:
        logits = logits.index_fill(-1, _suppressed(tuple(cfg.suppress_tokens), logits.shape[-1], logits.device), float("-inf"))
    return logits


@functools.lru_cache(maxsize=8)
def _suppressed(ids: tuple[int, ...], vocab: int, device: torch.device) -> torch.Tensor:
    """``ids`` as an index tensor on ``device``, made once per generation setting, not per token."""
    if max(ids) >= vocab:
        raise InputError(f"suppress_tokens has id {max(ids)}, outside the vocabulary [0, {vocab})")
    return torch.tensor(sorted(set(ids)), device=device)


def filter_logits(logits: torch.Tensor, cfg: GenerationConfig) -> torch.Tensor:
    """Temperature, then top-k, then nucleus (top-p) filtering, as samplers usually chain them."""
    logits = logits / cfg.temperature
    if cfg.top_k is not None:
        kth = torch.topk(logits, min(cfg.top_k, logits.shape[-1])).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p is not None and cfg.top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(-1)
        # Drop a token when the mass before it already reaches top_p; the best token always stays.
        drop_sorted = (cum - torch.softmax(sorted_logits, dim=-1)) >= cfg.top_p
        drop = drop_sorted.scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def greedy_or_sample(
    step: Callable[[torch.Tensor, int], torch.Tensor],
    batch: int,
    start_token: int,
    cfg: GenerationConfig,
    device: torch.device,
    generator: torch.Generator | None = None,
    argmax: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Generate ``[batch, <= max_new_tokens]`` ids; rows that ended are padded after their eos.

    The output is preallocated: each step writes one column, nothing grows by concatenation.
    Greedy takes ``argmax`` (``Decoding.argmax``) where given, the first maximum of the step's
    logits otherwise.
    """
    out = torch.full((batch, cfg.max_new_tokens), cfg.pad_token_id, dtype=torch.long, device=device)
    new = torch.full((batch, 1), start_token, dtype=torch.long, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    for t in range(cfg.max_new_tokens):
        if cfg.do_sample:
            probs = torch.softmax(filter_logits(next_logits(step, new, t, cfg), cfg), dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        elif argmax is not None:
            nxt = argmax(new, t)
        else:
            nxt = first_argmax(next_logits(step, new, t, cfg))
        nxt = torch.where(finished, torch.full_like(nxt, cfg.pad_token_id), nxt)
        out[:, t] = nxt
        new = nxt[:, None]
        finished |= nxt == cfg.eos_token_id
        if bool(finished.all()):
            return out[:, : t + 1]
    return out


def beam_search(
    step: Callable[[torch.Tensor, int], torch.Tensor],
    reorder: Callable[[torch.Tensor], None],
    batch: int,
    start_token: int,
    cfg: GenerationConfig,
    device: torch.device,
) -> torch.Tensor:
    """Beam search over ``batch * num_beams`` decoder rows (beam-major within each batch item).

    Scores are summed log-probabilities; a hypothesis that emits eos (or reaches the length limit)
    is finished with score ``sum / length ** length_penalty``. Returns the best finished
    hypothesis per item, padded after its eos.
    """
    k, n = cfg.num_beams, cfg.max_new_tokens
    running = torch.full((batch, k, n), cfg.pad_token_id, dtype=torch.long, device=device)
    running_scores = torch.full((batch, k), _NEG, device=device)
    running_scores[:, 0] = 0.0  # all beams start identical: expand only the first
    finished = torch.full((batch, k, n), cfg.pad_token_id, dtype=torch.long, device=device)
    finished_scores = torch.full((batch, k), _NEG, device=device)
    is_finished = torch.zeros(batch, k, dtype=torch.bool, device=device)
    finished_len = torch.zeros(batch, k, dtype=torch.long, device=device)
    improvable = torch.ones(batch, 1, dtype=torch.bool, device=device)
    top_k_mask = torch.arange(2 * k, device=device) < k
    offsets = torch.arange(batch, device=device)[:, None] * k
    new = torch.full((batch * k, 1), start_token, dtype=torch.long, device=device)

    for t in range(n):
        # The best 2k of all k * vocab candidates are among each beam's own best 2k: rank those
        # (the same candidates and scores as one top-k over everything, at a third of its cost).
        logprobs = torch.log_softmax(next_logits(step, new, t, cfg), dim=-1)
        row_scores, row_tokens = torch.topk(logprobs, min(2 * k, logprobs.shape[-1]))
        width = row_scores.shape[-1]
        row_scores = (row_scores.view(batch, k, width) + running_scores[:, :, None]).view(batch, k * width)
        cand_scores, cand_index = torch.topk(row_scores, 2 * k)
        cand_beam, cand_token = cand_index // width, row_tokens.view(batch, k * width).gather(1, cand_index)
        cand_seqs = running.gather(1, cand_beam[:, :, None].expand(-1, -1, n)).clone()
        cand_seqs[:, :, t] = cand_token
        ends = (cand_token == cfg.eos_token_id) | (t + 1 == n)

        # Live beams: the best k candidates that did not just end.
        live_scores = cand_scores + ends.float() * _NEG
        keep = torch.topk(live_scores, k).indices
        running = cand_seqs.gather(1, keep[:, :, None].expand(-1, -1, n))
        running_scores = live_scores.gather(1, keep)
        reorder((cand_beam.gather(1, keep) + offsets).view(-1))
        new = running[:, :, t].reshape(batch * k, 1)

        # Finished hypotheses: candidates among the top k that ended, if they beat the kept ones.
        just_ended = ends & top_k_mask[None, :]
        ended_scores = cand_scores / float(t + 1) ** cfg.length_penalty
        if cfg.early_stopping:
            ended_scores = ended_scores + is_finished.all(-1, keepdim=True).float() * _NEG
        ended_scores = ended_scores + (~improvable).float() * _NEG + (~just_ended).float() * _NEG
        merged_scores = torch.cat([finished_scores, ended_scores], dim=1)
        best = torch.topk(merged_scores, k).indices
        finished = torch.cat([finished, cand_seqs], dim=1).gather(1, best[:, :, None].expand(-1, -1, n))
        finished_scores = merged_scores.gather(1, best)
        is_finished = torch.cat([is_finished, just_ended], dim=1).gather(1, best)
        finished_len = torch.cat([finished_len, torch.full_like(cand_token, t + 1)], dim=1).gather(1, best)

        # Stop when no live beam can beat the worst finished one (scored at its current length).
        best_live = running_scores[:, :1] / float(t + 1) ** cfg.length_penalty
        worst = torch.where(is_finished, finished_scores.min(dim=1, keepdim=True).values, _NEG)
        improvable = improvable & (best_live > worst).any(-1, keepdim=True)
        all_done = cfg.early_stopping and bool(is_finished.all())
        if not bool(improvable.any()) or all_done or bool(ends.all()):
            break

    return finished[:, 0, : int(finished_len[:, 0].max())]
