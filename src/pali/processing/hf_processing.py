"""A transformers checkpoint's processor files (BLIP-2, InstructBLIP, mBLIP) -> our processor's parts.

What is read, and why each file:

* ``preprocessor_config.json`` (``BlipImageProcessor``; transformers 5 nests the same fields
  under ``image_processor`` in its own ``processor_config.json``): the square ``size``, the ``resample``
  filter (PIL's enum value), ``do_rescale``/``rescale_factor``, ``do_normalize`` with
  ``image_mean``/``image_std``. Images are resized by PIL as that processor does (see
  `pali.processing.image`); RGB conversion always happens (every BLIP-2 repo asks for it, and
  the ViT reads three channels). A centre crop or a non-square size is refused: the model's
  position embeddings expect exactly ``size`` x ``size``.
* ``spiece.model``: the text model's sentencepiece vocabulary (Flan-T5's 32k, mT0's 250k) with
  T5's 100 ``<extra_id_N>`` sentinels; every Hub repo of the family has it. A folder written by
  transformers 5's ``save_pretrained`` holds only ``tokenizer.json``: the sentencepiece model is
  rebuilt from it (`pali.processing.tokenizer_json`), with the same ids.
  transformers' added tokens (the ``<image>`` placeholder of transformers >= 4.47) are not read:
  we give the model the prompt alone, and a typed ``<image>`` is plain text.
* ``config.json``: ``model_type`` and the text model's type choose the prompt set (``blip2``
  for BLIP-2 with T5, ``mblip`` with mT5, ``instructblip``).
* InstructBLIP only: ``qformer_tokenizer/tokenizer.json`` (or ``qformer_tokenizer/vocab.txt``
  with ``do_lower_case`` from ``tokenizer_config.json`` beside it), the Q-Former's WordPiece.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..convert.blip2 import MODEL_TYPES, check_text_model
from ..errors import CheckpointError, InputError
from ..io import CONFIG_NAME, read_json
from .image import RESAMPLE
from .prompts import get_prompt_set
from .tokenizer import Tokenizer
from .tokenizer import load as load_tokenizer
from .wordpiece import WordPieceTokenizer

PREPROCESSOR_NAME = "preprocessor_config.json"
QFORMER_FOLDER = "qformer_tokenizer"
# BlipImageProcessor's defaults (OpenAI CLIP's statistics), for a file that leaves them out.
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

Resolve = Callable[[str], Path]  # file name in the checkpoint -> local path (CheckpointError if absent)


def image_fields(data: Any, where: str) -> dict[str, Any]:
    """``ProcessorConfig`` image fields from a ``preprocessor_config.json``'s content."""
    if not isinstance(data, dict):
        raise CheckpointError(f"{where}: expected a JSON object")
    if data.get("do_center_crop"):
        raise CheckpointError(f"{where}: a centre crop is not supported (BLIP-2 processors resize only)")
    if data.get("do_resize", True) is not True:
        raise CheckpointError(f"{where}: do_resize is off, but the model needs one fixed square size")
    size = data.get("size", 384)
    side = size if isinstance(size, int) else size.get("height") if isinstance(size, dict) else None
    if not isinstance(size, int) and (not isinstance(size, dict) or set(size) != {"height", "width"}
                                      or size["height"] != size["width"]):
        raise CheckpointError(f"{where}: size {size!r} is not a square {{'height': S, 'width': S}}")
    names = {int(v): k for k, v in RESAMPLE.items()}
    resample = data.get("resample", int(RESAMPLE["bicubic"]))
    if not isinstance(resample, int) or resample not in names:
        raise CheckpointError(f"{where}: resample {resample!r} is not a PIL filter number {sorted(names)}")
    normalize = data.get("do_normalize", True)
    return {  # values as the file has them: ProcessorConfig checks their types and sizes
        "image_size": side,
        "resample": names[resample],
        "image_backend": "pil",
        "rescale_factor": data.get("rescale_factor", 1 / 255) if data.get("do_rescale", True) else 1.0,
        "image_mean": data.get("image_mean", CLIP_MEAN) if normalize else [0.0] * 3,
        "image_std": data.get("image_std", CLIP_STD) if normalize else [1.0] * 3,
    }


def prompt_set_name(hf_config: Any, where: str) -> str:
    """``blip2``, ``mblip`` or ``instructblip`` from a transformers ``config.json``'s content."""
    kind = hf_config.get("model_type") if isinstance(hf_config, dict) else None
    if kind not in MODEL_TYPES:
        raise CheckpointError(
            f"{where}: model_type {kind!r} is not one whose processor pali reads ({', '.join(MODEL_TYPES)}); "
            "pass prompt_set= to choose the prompts yourself"
        )
    if kind == "instructblip":
        return "instructblip"
    return "mblip" if check_text_model(hf_config) == "mt5" else "blip2"


def read(
    resolve: Resolve, processor_config: dict[str, Any] | None = None, prompt_set: str | None = None
) -> tuple[dict[str, Any], Tokenizer, WordPieceTokenizer | None]:
    """``(ProcessorConfig fields, tokenizer, Q-Former tokenizer or None)`` from a checkpoint;
    ``processor_config``: transformers' ``processor_config.json``, if it has one."""
    nested = (processor_config or {}).get("image_processor")
    if isinstance(nested, dict):
        fields = image_fields(nested, "processor_config.json: image_processor")
    else:
        pre = resolve(PREPROCESSOR_NAME)
        fields = image_fields(read_json(pre), str(pre))
    config = resolve(CONFIG_NAME)
    hf_config = read_json(config)
    name = prompt_set or prompt_set_name(hf_config, str(config))
    try:
        family = get_prompt_set(name)
    except InputError as e:
        raise CheckpointError(str(e)) from None
    instruct = isinstance(hf_config, dict) and hf_config.get("model_type") == "instructblip"
    qformer = qformer_tokenizer(resolve) if instruct else None
    tokenizer = load_tokenizer(resolve)
    fields.update(
        prompt_set=family.name, languages=list(family.languages), classify_template=family.classify_template,
        extra_ids=tokenizer.extra_ids, qformer=qformer is not None,
    )
    return fields, tokenizer, qformer


def qformer_tokenizer(resolve: Resolve) -> WordPieceTokenizer:
    """The Q-Former's WordPiece from ``qformer_tokenizer/``: ``tokenizer.json``, else ``vocab.txt``."""
    try:
        return WordPieceTokenizer.from_file(resolve(f"{QFORMER_FOLDER}/tokenizer.json"))
    except CheckpointError as first:
        try:
            vocab = resolve(f"{QFORMER_FOLDER}/vocab.txt")
        except CheckpointError:
            raise CheckpointError(
                f"an InstructBLIP checkpoint needs its Q-Former tokenizer: {QFORMER_FOLDER}/tokenizer.json "
                f"or {QFORMER_FOLDER}/vocab.txt ({first})"
            ) from None
    try:
        lowercase = bool(read_json(resolve(f"{QFORMER_FOLDER}/tokenizer_config.json")).get("do_lower_case", True))
    except CheckpointError:
        lowercase = True  # bert-base-uncased, InstructBLIP's Q-Former vocabulary
    return WordPieceTokenizer.from_vocab(vocab, lowercase=lowercase)
