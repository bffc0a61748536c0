"""Models and sample images shipped inside the package, so the demo works offline.

A bundled model is a folder here in our usual layout (``config.json``, safetensors, processor
files, model card); loaders accept its name wherever they accept a path or a Hub repo id:
``PaliModel.from_pretrained("pali-demo")``. A bundled name takes precedence over a Hub repo of
the same name.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLES = HERE / "samples"
MODELS = ("pali-demo",)


def resolve(name_or_path):
    """The folder of a bundled model for its name; anything else is returned unchanged."""
    if isinstance(name_or_path, str) and name_or_path in MODELS:
        return HERE / name_or_path
    return name_or_path
