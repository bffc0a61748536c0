"""The model card (``README.md``) written next to the weights.

The YAML front matter is what the Hub indexes (library, licence, tags, base models); the body
says what the model is and where every part of its weights came from, because a seeded PaLI
inherits the licences of the unimodal checkpoints it was built from.
"""

from __future__ import annotations

from typing import Any

TAGS = ["pali", "vision-language", "image-to-text", "multilingual", "pytorch", "safetensors"]


def license_of(sources: list[dict[str, Any]], override: str | None = None) -> str | None:
    """One licence for the front matter: the override, the sources' common one, or "other"."""
    if override:
        return override
    found = sorted({s["license"] for s in sources if s.get("license")})
    return found[0] if len(found) == 1 else ("other" if found else None)


def model_card(model: Any, *, license: str | None = None) -> str:
    """Markdown with YAML front matter for ``model`` (a [`pali.PaliModel`][])."""
    from huggingface_hub import ModelCardData

    config = model.config
    sources: list[dict[str, Any]] = list(getattr(model, "weight_sources", []) or [])
    base_models = sorted({s["source"] for s in sources if s.get("revision")})  # Hub repos only
    chosen = license_of(sources, license)
    extra: dict[str, Any] = {}
    if chosen == "other":
        extra["license_name"] = "mixed"
        extra["license_details"] = {s["source"]: s["license"] for s in sources if s.get("license")}
    data = ModelCardData(
        library_name="pali", license=chosen, tags=TAGS, pipeline_tag="image-text-to-text",
        base_model=base_models or None, **extra,
    )
    title = config.preset or "PaLI model"
    rows = "\n".join(
        f"| {s.get('tower', '')} | {s.get('source', '')} | {s.get('revision') or ''} | "
        f"{s.get('format', '')} | {s.get('license') or 'unknown'} |"
        for s in sources
    ) or "| | (not recorded) | | | |"
    return f"""---
{data.to_yaml()}
---

# {title}

A [PaLI](https://arxiv.org/abs/2209.06794) vision-language model for the `pali` library: a
`{config.vision.kind}` vision encoder ({config.vision.width} wide, {config.vision.num_tokens} visual
tokens at {config.vision.image_size} px), a linear projection, and a `{config.text.kind}`
encoder-decoder (d_model {config.text.d_model}, vocabulary {config.text.vocab_size}).

- preset: `{config.preset or "custom"}`
- parameters: {model.num_parameters():,}

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
