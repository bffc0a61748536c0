"""Fine-tuning helpers: which parameters train, and which module names adapters attach to.

PaLI trains with the vision tower frozen (the projection and the whole encoder-decoder learn); its
high-resolution phase unfreezes everything; cheaper recipes train the projection and the encoder
only. [`freeze`][pali.train.helpers.freeze] applies such a policy and then name patterns on top, and
reports what is left trainable so a typo never silently trains the wrong thing.

LoRA (``peft``) finds modules by name. Ours are ``nn.Linear`` layers named:

* ``q``, ``k``, ``v``, ``o``: attention projections, in both towers (ViT self-attention; mT5
  encoder self-attention, decoder ``self_attn`` and ``cross_attn``);
* ``wi_0``, ``wi_1``, ``wo``: mT5's gated MLP (``wi``, ``wo`` in an original-T5 stack);
* ``fc1``, ``fc2``: the ViT MLP;
* ``projection``: the vision-to-text linear map.

Bare names like ``"q"`` match both towers;
[`lora_target_modules`][pali.train.helpers.lora_target_modules] builds the regex that picks towers and
layer kinds explicitly.
"""

from __future__ import annotations

from dataclasses import dataclass
import fnmatch
import re
from typing import Iterable

from torch import nn

from ..errors import InputError

POLICIES: dict[str, tuple[str, ...]] = {
    "none": ("*",),  # nothing frozen
    "vision": ("projection.*", "text.*"),  # PaLI's default: the vision tower frozen
    "projection+encoder": ("projection.*", "text.encoder.*"),
    "projection": ("projection.*",),
}
"""Policy name -> glob patterns of the parameters it leaves trainable."""

ATTENTION = ("q", "k", "v", "o")
MT5_MLP = ("wi_0", "wi_1", "wi", "wo")
VIT_MLP = ("fc1", "fc2")


def _matcher(pattern: str):
    """``re:<regex>`` is a regular expression (full match); anything else is a glob."""
    if pattern.startswith("re:"):
        try:
            regex = re.compile(pattern[3:])
        except re.error as e:
            raise InputError(f"bad regex in pattern {pattern!r}: {e}") from None
        return lambda name: regex.fullmatch(name) is not None
    return lambda name: fnmatch.fnmatchcase(name, pattern)


def _apply(params: dict[str, nn.Parameter], patterns: Iterable[str], trainable: bool, what: str) -> None:
    if isinstance(patterns, str):
        raise InputError(f"{what} must be a list of patterns, got the string {patterns!r}")
    for pattern in patterns:
        match = _matcher(pattern)
        names = [n for n in params if match(n)]
        if not names:
            raise InputError(
                f"{what} pattern {pattern!r} matches no parameter (names look like "
                f"'text.encoder.layers.0.attn.q.weight'; use a glob or 're:<regex>')"
            )
        for name in names:
            params[name].requires_grad_(trainable)


@dataclass
class TrainableSummary:
    """Trainable / total parameter counts, overall and per top-level part of the model."""

    trainable: int
    total: int
    parts: dict[str, tuple[int, int]]

    def __str__(self) -> str:
        rows = [f"{name}: {t:,} / {n:,} trainable" for name, (t, n) in self.parts.items()]
        return "\n".join(rows + [f"total: {self.trainable:,} / {self.total:,} trainable"])


def summarize(model: nn.Module) -> TrainableSummary:
    """Count trainable parameters per part (``vision``, ``projection``, ``text.encoder``, ...)."""
    parts: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        head = name.split(".")
        part = ".".join(head[:2]) if head[0] == "text" and len(head) > 2 else head[0]
        counts = parts.setdefault(part, [0, 0])
        counts[0] += p.numel() if p.requires_grad else 0
        counts[1] += p.numel()
    return TrainableSummary(
        trainable=sum(t for t, _ in parts.values()),
        total=sum(n for _, n in parts.values()),
        parts={k: (t, n) for k, (t, n) in parts.items()},
    )


def freeze(
    model: nn.Module,
    policy: str = "vision",
    *,
    trainable: Iterable[str] = (),
    frozen: Iterable[str] = (),
) -> TrainableSummary:
    """Set ``requires_grad`` by ``policy``, then unfreeze ``trainable`` and freeze ``frozen``.

    Patterns are globs over parameter names (``"text.decoder.*"``, ``"*.relpos_bias"``) or
    regexes prefixed ``re:`` (``r"re:text\\.encoder\\.layers\\.(1[0-9])\\..*"``). ``frozen`` is
    applied last, so it wins. A pattern matching no parameter is an error: it is a typo.

    >>> summary = freeze(PaliModel.from_preset("pali-tiny"), "projection+encoder")
    """
    if policy not in POLICIES:
        raise InputError(f"unknown freezing policy {policy!r}; choose from {sorted(POLICIES)}")
    params = dict(model.named_parameters())
    model.requires_grad_(False)
    _apply(params, POLICIES[policy], True, f"policy {policy!r}")
    _apply(params, trainable, True, "trainable")
    _apply(params, frozen, False, "frozen")
    return summarize(model)


_TOWERS = {"vision": r"vision\.blocks\.\d+", "encoder": r"text\.encoder\.layers\.\d+",
           "decoder": r"text\.decoder\.layers\.\d+"}


def lora_target_modules(
    towers: Iterable[str] = ("encoder", "decoder"),
    *,
    attention: Iterable[str] = ATTENTION,
    mlp: bool = False,
    projection: bool = False,
) -> str:
    """A ``target_modules`` regex for ``peft.LoraConfig`` selecting layers by tower and kind.

    ``towers`` from ``"vision"``, ``"encoder"``, ``"decoder"``; ``attention`` the projections
    (any of ``q k v o``); ``mlp`` adds each tower's MLP linears; ``projection`` adds the
    vision-to-text projection. peft full-matches a string against every module name.
    """
    towers, attention = list(towers), list(attention)
    unknown = sorted(set(towers) - set(_TOWERS)) + sorted(set(attention) - set(ATTENTION))
    if unknown:
        raise InputError(f"unknown LoRA towers/projections {unknown}; towers {sorted(_TOWERS)}, attention {ATTENTION}")
    alternatives = []
    for tower in towers:
        names = list(attention) + (list(VIT_MLP if tower == "vision" else MT5_MLP) if mlp else [])
        if names:
            alternatives.append(rf"{_TOWERS[tower]}\.(?:\w+\.)?(?:{'|'.join(names)})")
    if projection:
        alternatives.append("projection")
    if not alternatives:
        raise InputError("lora_target_modules selects nothing")
    return "|".join(f"(?:{a})" for a in alternatives)
