"""The model card (``README.md``) written next to the weights.

The YAML front matter is what the Hub indexes (library, licence, tags, base models); the body
says what the model is and where every part of its weights came from, because a seeded PaLI
inherits the licences of the unimodal checkpoints it was built from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import bundled
from ..errors import InputError

TAGS = ["pali", "vision-language", "image-to-text", "multilingual", "pytorch", "safetensors"]


def license_of(sources: list[dict[str, Any]], override: str | None = None) -> str | None:
    """One licence for the front matter: the override, the sources' common one, or "other"."""
    if override:
        return override
    found = sorted({s["license"] for s in sources if s.get("license")})
    return found[0] if len(found) == 1 else ("other" if found else None)


@dataclass(frozen=True)
class CardInfo:
    """What the weights cannot tell about a saved model, said by whoever saves it
    (``save_pretrained(..., card=CardInfo(dataset="my_data/data.jsonl"))``, or the same as a dict).

    ``title`` heads the card; ``dataset`` names the data it was fine-tuned on; ``notes`` is a
    paragraph of your own (how it was trained, what it is for)."""

    title: str | None = None
    dataset: str | None = None
    notes: str | None = None

    @classmethod
    def of(cls, value: "CardInfo | Mapping[str, str] | None") -> "CardInfo":
        if value is None or isinstance(value, CardInfo):
            return value or cls()
        names = {f.name for f in fields(cls)}
        if not isinstance(value, Mapping) or set(value) - names:
            raise InputError(f"card must be a CardInfo or a dict with keys among {sorted(names)}, got {value!r}")
        return cls(**value)


def base_of(model: Any) -> str | None:
    """What ``model`` was loaded from: a bundled model's name, a Hub repo id or a folder."""
    source = getattr(model, "name_or_path", None)
    if source is None:
        return None
    path = Path(source)
    if path.parent == bundled.HERE and path.name in bundled.MODELS:
        return path.name
    return str(source)


def _is_repo_id(source: str) -> bool:
    return not Path(source).is_absolute() and source not in bundled.MODELS


def model_card(model: Any, *, license: str | None = None, info: "CardInfo | Mapping[str, str] | None" = None) -> str:
    """Markdown with YAML front matter for ``model`` (a [`pali.PaliModel`][]): what it is based on
    (the preset, or the model it was loaded from), what it was tuned on when ``info`` says, and
    the date it was saved."""
    from huggingface_hub import ModelCardData

    info = CardInfo.of(info)
    config = model.config
    sources: list[dict[str, Any]] = list(getattr(model, "weight_sources", []) or [])
    base = base_of(model)
    base_models = sorted({s["source"] for s in sources if s.get("revision")}  # Hub repos only
                         | ({base} if base and _is_repo_id(base) else set()))
    chosen = license_of(sources, license)
    extra: dict[str, Any] = {}
    if chosen == "other":
        extra["license_name"] = "mixed"
        extra["license_details"] = {s["source"]: s["license"] for s in sources if s.get("license")}
    data = ModelCardData(
        library_name="pali", license=chosen, tags=TAGS, pipeline_tag="image-text-to-text",
        base_model=base_models or None, **extra,
    )
    if info.title:
        title = info.title
    elif base and info.dataset:
        title = f"{base}, fine-tuned on {info.dataset}"
    elif base:
        title = f"A model based on {base}"
    else:
        title = config.preset or "PaLI model"
    rows = "\n".join(
        f"| {s.get('tower', '')} | {s.get('source', '')} | {s.get('revision') or ''} | "
        f"{s.get('format', '')} | {s.get('license') or 'unknown'} |"
        for s in sources
    ) or (f"| model | {base} | | pali | unknown |" if base else
          f"| model | random initialisation of `{config.preset or 'a custom config'}` | | | |")
    lines = [f"- architecture: `{config.preset or 'custom'}`" + (" preset" if config.preset else "")]
    if base:
        lines.append(f"- based on: `{base}` (loaded with `PaliModel.from_pretrained`, then saved)")
    if info.dataset:
        lines.append(f"- fine-tuned on: {info.dataset}")
    lines += [f"- parameters: {model.num_parameters():,}",
              f"- saved: {datetime.now(timezone.utc).date().isoformat()}"]
    about = "\n".join(lines) + (f"\n\n{info.notes}" if info.notes else "")
    return f"""---
{data.to_yaml()}
---

# {title}

A [PaLI](https://arxiv.org/abs/2209.06794) vision-language model for the `pali` library: a
`{config.vision.kind}` vision encoder ({config.vision.width} wide, {config.vision.num_tokens} visual
tokens at {config.vision.image_size} px), a linear projection, and a `{config.text.kind}`
encoder-decoder (d_model {config.text.d_model}, vocabulary {config.text.vocab_size}).

{about}

## Where the weights came from

| tower | source | revision | format | licence |
|---|---|---|---|---|
{rows}

The licence above is {"that of every source" if chosen not in (None, "other") else "per source: check each one"};
a model seeded from unimodal checkpoints carries their terms.

## Use

```python
from pali import PaliModel

model = PaliModel.from_pretrained("<this repo or folder>")
```
"""
