"""Generation: cached against uncached, batched against one by one, and what runs how often."""

import pytest
import torch

from pali import GenerationConfig, InputError, PaliModel


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = PaliModel.from_preset("pali-tiny").eval()
    with torch.no_grad():  # a sharper head makes ties between candidate tokens unlikely
        m.text.lm_head.weight.mul_(3.0)
    return m


def _prompts():
    g = torch.Generator().manual_seed(5)
    px = torch.randn(3, 3, 32, 32, generator=g)
    lengths = [7, 3, 5]
    ids = torch.zeros(3, 7, dtype=torch.long)
    mask = torch.zeros(3, 7, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(2, 256, (n,), generator=g)
        mask[i, :n] = 1
    return px, ids, mask, lengths


@pytest.mark.parametrize(
    "kwargs",
    [dict(), dict(num_beams=3), dict(num_beams=2, length_penalty=0.5, early_stopping=True)],
)
def test_cached_equals_uncached(model, kwargs):
    px, ids, mask, _ = _prompts()
    cached = model.generate(px, ids, mask, max_new_tokens=12, eos_token_id=7, **kwargs)
    uncached = model.generate(px, ids, mask, max_new_tokens=12, eos_token_id=7, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)


def test_sampling_cached_equals_uncached_and_is_reproducible(model):
    px, ids, mask, _ = _prompts()
    runs = [
        model.generate(px, ids, mask, max_new_tokens=10, do_sample=True, top_k=20, top_p=0.9, temperature=0.8,
                       use_cache=use_cache, generator=torch.Generator().manual_seed(3))
        for use_cache in (True, False, True)
    ]
    assert torch.equal(runs[0], runs[1]) and torch.equal(runs[0], runs[2])
    other = model.generate(px, ids, mask, max_new_tokens=10, do_sample=True, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(runs[0], other)


def test_top_k_one_is_greedy(model):
    px, ids, mask, _ = _prompts()
    greedy = model.generate(px, ids, mask, max_new_tokens=8)
    sampled = model.generate(px, ids, mask, max_new_tokens=8, do_sample=True, top_k=1,
                             generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy, sampled)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_batched_equals_one_by_one(model, num_beams):
    px, ids, mask, lengths = _prompts()
    batched = model.generate(px, ids, mask, max_new_tokens=10, num_beams=num_beams, eos_token_id=7)
    for i, n in enumerate(lengths):
        alone = model.generate(px[i : i + 1], ids[i : i + 1, :n], max_new_tokens=10, num_beams=num_beams, eos_token_id=7)
        row = batched[i, : alone.shape[1]]
        assert torch.equal(row, alone[0]), (i, row, alone)
        assert (batched[i, alone.shape[1] :] == 0).all()  # only padding after a shorter answer


def test_rows_are_padded_after_eos(model):
    px, ids, mask, _ = _prompts()
    free = model.generate(px, ids, mask, max_new_tokens=10, eos_token_id=-1)
    eos = int(free[0, 2])
    out = model.generate(px, ids, mask, max_new_tokens=10, eos_token_id=eos)
    row = out[0].tolist()
    first = row.index(eos)
    assert first <= 2 and all(t == 0 for t in row[first + 1 :])


def test_encoder_and_cross_attention_run_once(model):
    px, ids, mask, _ = _prompts()
    calls = {"encoder": 0, "cross_k": 0, "self_k": 0}

    def count(name):
        def hook(*_):
            calls[name] += 1
        return hook

    handles = [
        model.text.encoder.layers[0].register_forward_hook(count("encoder")),
        model.text.decoder.layers[0].cross_attn.k.register_forward_hook(count("cross_k")),
        model.text.decoder.layers[0].self_attn.k.register_forward_hook(count("self_k")),
    ]
    try:
        out = model.generate(px, ids, mask, max_new_tokens=9, eos_token_id=-1)
    finally:
        for h in handles:
            h.remove()
    assert out.shape[1] == 9
    assert calls == {"encoder": 1, "cross_k": 1, "self_k": 9}


def test_kv_cache_is_preallocated(model):
    px, ids, mask, _ = _prompts()
    hidden, enc_mask = model.encode(px, ids, mask)
    cache = model.text.start_decoding(hidden, enc_mask, max_len=6)
    assert cache is model.text.decoder.kv_cache
    k_storage = [k.data_ptr() for k in cache.k]
    tokens = torch.zeros(3, 1, dtype=torch.long)
    for t in range(6):
        logits = model.text.decode_step(tokens, t)
        tokens = logits[:, -1].argmax(-1, keepdim=True)
    assert [k.data_ptr() for k in cache.k] == k_storage and cache.max_len == 6
    with pytest.raises(InputError, match="KV cache holds 6"):
        model.text.decode_step(tokens, 6)
    assert not any(".kv_cache." in key for key in model.state_dict())  # never saved


def test_eager_steps_attend_over_the_filled_cache_only(model, monkeypatch):
    """Run eagerly, step t's self-attention reads t + 1 keys, not the whole preallocated buffer
    (the compiled step's fixed shapes cost a full-length attention and a causal mask per layer)."""
    import pali.nn.attention

    seen = []
    attend = pali.nn.attention.attend

    def spy(q, k, v, **kwargs):
        if kwargs.get("causal"):
            seen.append((k.shape[-2], kwargs["q_offset"]))
        return attend(q, k, v, **kwargs)

    monkeypatch.setattr(pali.nn.attention, "attend", spy)
    px, ids, mask, _ = _prompts()
    model.generate(px, ids, mask, max_new_tokens=5, eos_token_id=-1)
    layers = model.config.text.num_decoder_layers
    assert seen == [(t + 1, t) for t in range(5) for _ in range(layers)]


def test_generation_config_with_keyword_overrides(model):
    px, ids, mask, _ = _prompts()
    cfg = GenerationConfig(max_new_tokens=4, num_beams=2, eos_token_id=-1)
    assert model.generate(px, ids, mask, generation_config=cfg).shape[1] == 4
    overridden = model.generate(px, ids, mask, generation_config=cfg, max_new_tokens=6)
    assert overridden.shape[1] == 6 and cfg.max_new_tokens == 4  # the config itself is unchanged
    assert torch.equal(overridden, model.generate(px, ids, mask, max_new_tokens=6, num_beams=2, eos_token_id=-1))
    with pytest.raises(InputError, match="unknown generation option.*'max_length'"):
        model.generate(px, ids, mask, generation_config=cfg, max_length=6)


def test_generation_after_inference_mode_runs_under_no_grad(model):
    """``pali.run`` generates under ``torch.inference_mode``; a later ``generate`` in the same
    process, under ``no_grad`` (the pipeline's), must not write into the inference-mode buffers."""
    px, ids, mask, _ = _prompts()
    with torch.inference_mode():
        first = model.generate(px, ids, mask, max_new_tokens=6)
    with torch.no_grad():
        second = model.generate(px, ids, mask, max_new_tokens=6)
    assert torch.equal(first, second)


# -- no per-token waste ---------------------------------------------------------------------------


def _recording_step(rows: int, vocab: int = 11):
    """A stand-in decoder: random logits, and a record of what each step was given."""
    g = torch.Generator().manual_seed(0)
    seen = []

    def step(new, position):
        seen.append((tuple(new.shape), position))
        return torch.randn(rows, 1, vocab, generator=g)

    return step, seen


@pytest.mark.parametrize("num_beams", [1, 3])
def test_strategies_hand_the_step_only_the_newest_tokens(num_beams, monkeypatch):
    """No strategy rebuilds (or concatenates) the prefix per token: the step gets ``[rows, 1]`` and
    its position, and greedy writes into its preallocated output."""
    from pali.generation import beam_search, greedy_or_sample

    cfg = GenerationConfig(max_new_tokens=6, num_beams=num_beams, eos_token_id=-1, pad_token_id=0)
    step, seen = _recording_step(2 * num_beams)
    if num_beams > 1:
        out = beam_search(step, lambda index: None, 2, 0, cfg, torch.device("cpu"))
    else:
        cats = []
        real_cat = torch.cat
        monkeypatch.setattr(torch, "cat", lambda *a, **k: cats.append(1) or real_cat(*a, **k))
        out = greedy_or_sample(step, 2, 0, cfg, torch.device("cpu"))
        assert cats == []
    assert out.shape == (2, 6)
    assert seen == [((2 * num_beams, 1), t) for t in range(6)]


def test_one_host_read_per_token_whatever_the_depth(model, monkeypatch):
    """The encoder's padding is checked once per generation, not per layer per token: a padded
    batch costs one ``bool(tensor)`` per token (has every row ended?) plus a constant."""
    px, ids, mask, _ = _prompts()  # rows 2 and 3 carry padding
    reads = []
    real_bool = torch.Tensor.__bool__
    monkeypatch.setattr(torch.Tensor, "__bool__", lambda t: reads.append(1) or real_bool(t))
    counts = []
    for n in (4, 9):
        reads.clear()
        model.generate(px, ids, mask, max_new_tokens=n, eos_token_id=-1)
        counts.append(len(reads))
    assert model.config.text.num_decoder_layers >= 2
    assert counts[1] - counts[0] == 9 - 4


@pytest.mark.parametrize("num_beams", [1, 2])
def test_the_kv_cache_is_released_after_generate(model, num_beams, monkeypatch):
    import weakref

    held = []
    start = model.text.start_decoding

    def spy(*args, **kwargs):
        cache = start(*args, **kwargs)
        held.extend(weakref.ref(t) for t in (*cache.k, *cache.v, cache.cross_k, cache.cross_v))
        return cache

    monkeypatch.setattr(model.text, "start_decoding", spy)
    px, ids, mask, _ = _prompts()
    out = model.generate(px, ids, mask, max_new_tokens=4, num_beams=num_beams)
    assert out.shape[0] == 3 and len(held) == 2 * model.config.text.num_decoder_layers + 2
    assert all(ref() is None for ref in held)  # nothing keeps the buffers alive


def test_generate_runs_in_inference_mode_and_returns_a_normal_tensor(model, monkeypatch):
    """The generation runs under ``torch.inference_mode`` (less per-operation bookkeeping than
    ``no_grad``); the ids it returns are an ordinary tensor, and the model trains afterwards."""
    seen = []
    step = model.text._step  # what greedy's decode_argmax and decode_step both run
    monkeypatch.setattr(model.text, "_step", lambda *a: seen.append(torch.is_inference_mode_enabled()) or step(*a))
    px, ids, mask, _ = _prompts()
    out = model.generate(px, ids, mask, max_new_tokens=3)
    assert seen and all(seen)
    assert not out.is_inference()
    out[0, 0] = 1  # an inference tensor would refuse this outside inference mode
    loss = model(px, ids, mask, labels=out.clamp(min=0)).loss
    loss.backward()
    assert model.text.lm_head.weight.grad is not None
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("vocab", [250112, 32128, 5000, 4099, 300])
def test_first_argmax_is_argmax_ties_nan_and_infinities_included(vocab):
    from pali.nn.argmax import argmax_blocks as _argmax_blocks, first_argmax

    g = torch.Generator().manual_seed(vocab)
    logits = torch.randn(6, vocab, generator=g)
    logits[1, vocab // 3] = logits[1, vocab - 1] = logits[1].max() + 1  # a tie across blocks
    logits[2, 7] = logits[2, 8] = logits[2].max() + 1  # a tie inside a block
    logits[3] = float("-inf")
    logits[4, vocab // 2] = float("nan")
    logits[4, vocab - 2] = float("nan")
    logits[5, vocab - 1] = float("inf")
    assert torch.equal(first_argmax(logits), logits.argmax(-1))
    assert torch.equal(first_argmax(logits[2:3]), logits[2:3].argmax(-1))
    # A column of a step's [B, 1, V] logits, as ``next_logits`` hands it over.
    assert torch.equal(first_argmax(logits[:, None][:, -1]), logits.argmax(-1))
    blocks = _argmax_blocks(vocab)
    assert blocks == {250112: 977, 32128: 1004, 5000: 1000, 4099: 1, 300: 1}[vocab]
