"""Train a tiny multilingual sentencepiece model on the fly, laid out like mT5's ``spiece.model``.

No real mT5 vocabulary is available offline, so tests train one in milliseconds from the text
below. The special ids follow mT5: ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2, no ``<s>``; a
unigram model with sentencepiece's default NFKC normalisation and whitespace cleanup.

``byte_fallback=True`` (what mT5 itself uses) spells characters missing from the vocabulary as
``<0xNN>`` byte pieces; ``False`` maps them to ``<unk>``. Tests exercise both paths.
"""

from __future__ import annotations

import io
from pathlib import Path

import sentencepiece as spm

CORPUS = [
    "Generate the alt_text in en at 0: a photo of a cat sitting on a red sofa",
    "Generate the ocr_text in en: open 24 hours",
    "Answer in en: what colour is the car? blue",
    "Generate a question in fr for bleu: de quelle couleur est la voiture ?",
    "Detect cat and dog 102 215 873 640 cat ; 5 0 999 512 dog",
    "a dog, a bird, a car, a tree, a house, a person, a bicycle, an airplane",
    "the quick brown fox jumps over the lazy dog 0 1 2 3 4 5 6 7 8 9",
    "un chat assis sur un canapé rouge, le chien et l'oiseau",
    "eine Katze sitzt auf einem roten Sofa, der Hund und der Vogel",
    "一只猫坐在红色的沙发上。狗和鸟在花园里。",
    "قطة تجلس على أريكة حمراء والكلب والطائر",
    "एक बिल्ली लाल सोफे पर बैठी है और कुत्ता",
    "кошка сидит на красном диване, собака и птица",
    "猫が赤いソファに座っています",
    "🐱 🐶 😀 cats and dogs 🚗",
]


def train_spm(
    directory: str | Path,
    *,
    vocab_size: int = 156,
    byte_fallback: bool = False,
    corpus: list[str] | None = None,
    user_defined_symbols: list[str] | None = None,
) -> Path:
    """Train and write ``directory/spiece.model``; returns its path.

    ``vocab_size`` counts sentencepiece pieces only; the default 156 plus the 100 sentinels is
    256, the vocabulary of the ``pali-tiny`` preset. With ``byte_fallback`` it must leave room for
    the 256 byte pieces.
    """
    sentences = (corpus or CORPUS) * 4
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=0.9995,  # drops the rarest characters: they become unknown
        byte_fallback=byte_fallback,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        hard_vocab_limit=False,
        user_defined_symbols=user_defined_symbols or [],
        minloglevel=2,
    )
    path = Path(directory) / "spiece.model"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())
    return path
