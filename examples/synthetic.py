"""A seeded synthetic vision-language world: coloured shapes and rendered words.

Each image holds one or two shapes of different kinds (so "the circle" is never ambiguous), or a
word rendered with PIL's default font. Every example is one of the paper's task families, phrased
in one of five languages: captioning, VQA (colour, count, shape on the left/right), detection
(``ymin xmin ymax xmax label`` on the 0-999 grid) and OCR. The answers are exact, so exact match
is a fair metric.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont

IMAGE_SIZE = 64
LANGS = ("en", "fr", "de", "zh", "hi")
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 90, 230), "yellow": (235, 200, 30)}
SHAPES = ("circle", "square", "triangle")
WORDS = (
    "cat", "dog", "sun", "map", "tree", "book", "milk", "rain", "star", "fish", "bird", "moon",
    "haus", "baum", "buch", "hund", "pain", "lait", "chat", "mer", "sol", "luna", "casa", "agua",
    "pali", "text", "open", "stop", "red", "blue",
)
ALPHABET = "".join(sorted(set("".join(WORDS))))  # the letters OCR can meet, for per-letter targets

# Word tables: colour and shape names per language; German adjectives agree with the noun's gender.
COLOR_WORDS = {
    "en": {"red": "red", "green": "green", "blue": "blue", "yellow": "yellow"},
    "fr": {"red": "rouge", "green": "vert", "blue": "bleu", "yellow": "jaune"},
    "de": {"red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb"},
    "zh": {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色"},
    "hi": {"red": "लाल", "green": "हरा", "blue": "नीला", "yellow": "पीला"},
}
SHAPE_WORDS = {
    "en": {"circle": "circle", "square": "square", "triangle": "triangle"},
    "fr": {"circle": "cercle", "square": "carré", "triangle": "triangle"},
    "de": {"circle": "Kreis", "square": "Quadrat", "triangle": "Dreieck"},
    "zh": {"circle": "圆形", "square": "正方形", "triangle": "三角形"},
    "hi": {"circle": "वृत्त", "square": "वर्ग", "triangle": "त्रिभुज"},
}
_DE_NEUTER = {"square", "triangle"}


@dataclass
class Shape:
    kind: str
    color: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, inclusive-exclusive


@dataclass
class Example:
    image: Image.Image
    task: str  # "caption", "vqa", "detect" or "ocr"
    lang: str
    prompt_args: dict
    target: str
    shapes: list[Shape] = field(default_factory=list)
    glyphs: list[tuple[str, tuple[int, int, int, int]]] = field(default_factory=list)  # letter, x0 y0 x1 y1


def noun_phrase(shape: Shape, lang: str) -> str:
    color, noun = COLOR_WORDS[lang][shape.color], SHAPE_WORDS[lang][shape.kind]
    if lang == "en":
        return f"a {color} {noun}"
    if lang == "fr":
        return f"un {noun} {color}"
    if lang == "de":
        return f"ein {color}{'es' if shape.kind in _DE_NEUTER else 'er'} {noun}"
    if lang == "zh":
        return f"{color}{noun}"
    return f"एक {color} {noun}"


_AND = {"en": " and ", "fr": " et ", "de": " und ", "zh": "和", "hi": " और "}


def caption(shapes: list[Shape], lang: str) -> str:
    """Shapes named left to right, joined by the language's "and"."""
    return _AND[lang].join(noun_phrase(s, lang) for s in shapes)


_QUESTIONS = {
    "color": {
        "en": "what color is the {shape}?", "fr": "de quelle couleur est le {shape} ?",
        "de": "welche Farbe hat {article} {shape}?", "zh": "{shape}是什么颜色？", "hi": "{shape} किस रंग का है?",
    },
    "count": {
        "en": "how many shapes are there?", "fr": "combien de formes y a-t-il ?", "de": "wie viele Formen gibt es?",
        "zh": "有几个形状？", "hi": "कितनी आकृतियाँ हैं?",
    },
    "left": {
        "en": "what shape is on the left?", "fr": "quelle forme est à gauche ?", "de": "welche Form ist links?",
        "zh": "左边是什么形状？", "hi": "बाईं ओर कौन सी आकृति है?",
    },
    "right": {
        "en": "what shape is on the right?", "fr": "quelle forme est à droite ?", "de": "welche Form ist rechts?",
        "zh": "右边是什么形状？", "hi": "दाईं ओर कौन सी आकृति है?",
    },
}


def question(kind: str, lang: str, shape: Shape | None = None) -> str:
    template = _QUESTIONS[kind][lang]
    if shape is None:
        return template
    article = "das" if shape.kind in _DE_NEUTER else "den"
    return template.format(shape=SHAPE_WORDS[lang][shape.kind], article=article)


def detection_target(shape: Shape, size: int = IMAGE_SIZE) -> str:
    """``ymin xmin ymax xmax label`` with coordinates quantised to 0-999, as the paper does."""
    x0, y0, x1, y1 = shape.box
    q = [round(v / size * 999) for v in (y0, x0, y1, x1)]
    return f"{q[0]} {q[1]} {q[2]} {q[3]} {shape.kind}"


def _draw_shape(draw: ImageDraw.ImageDraw, shape: Shape) -> None:
    x0, y0, x1, y1 = shape.box
    fill = COLORS[shape.color]
    if shape.kind == "circle":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
    elif shape.kind == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
    else:
        draw.polygon([((x0 + x1 - 1) / 2, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=fill)


def random_scene(rng: random.Random, size: int = IMAGE_SIZE) -> tuple[Image.Image, list[Shape]]:
    """One or two non-overlapping shapes of different kinds, sorted left to right."""
    count = rng.choice((1, 2))
    kinds = rng.sample(SHAPES, count)
    shapes: list[Shape] = []
    while len(shapes) < count:
        side = rng.randint(size // 5, size // 2 - 4)
        x0, y0 = rng.randint(0, size - side), rng.randint(0, size - side)
        box = (x0, y0, x0 + side, y0 + side)
        # Keep shapes apart horizontally so "left" and "right" are unambiguous.
        if all(box[2] + 2 <= s.box[0] or s.box[2] + 2 <= box[0] for s in shapes):
            shapes.append(Shape(kinds[len(shapes)], rng.choice(tuple(COLORS)), box))
    shapes.sort(key=lambda s: s.box[0])
    background = tuple(rng.randint(0, 60) for _ in range(3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        _draw_shape(draw, shape)
    return image, shapes


def word_image(rng: random.Random, word: str, size: int = IMAGE_SIZE
               ) -> tuple[Image.Image, list[tuple[str, tuple[int, int, int, int]]]]:
    """``word`` in dark ink on a light background, and each letter's box (``x0 y0 x1 y1``, pixels).

    The letter boxes are the per-letter targets of the vision stage: with only the whole word to
    predict, the tower learned to tell words apart by their outline and OCR stayed below 10%.
    """
    font = ImageFont.load_default(size=18)
    image = Image.new("RGB", (size, size), tuple(rng.randint(200, 255) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((0, 0), word, font=font)
    margin = 2
    x = rng.randint(margin, max(margin, size - margin - (right - left))) - left
    y = rng.randint(margin, max(margin, size - margin - (bottom - top))) - top
    draw.text((x, y), word, fill=tuple(rng.randint(0, 60) for _ in range(3)), font=font)
    glyphs = []
    for i, letter in enumerate(word):
        box = draw.textbbox((x + draw.textlength(word[:i], font=font), y), letter, font=font)
        glyphs.append((letter, tuple(int(v) for v in box)))
    return image, glyphs


def make_example(rng: random.Random, task: str | None = None, lang: str | None = None) -> Example:
    task = task or rng.choice(("caption", "caption", "vqa", "vqa", "detect", "ocr"))
    lang = lang or rng.choice(LANGS)
    if task == "ocr":
        word = rng.choice(WORDS)
        image, glyphs = word_image(rng, word)
        return Example(image, "ocr", "en", {}, word, glyphs=glyphs)
    image, shapes = random_scene(rng)
    if task == "caption":
        return Example(image, task, lang, {}, caption(shapes, lang), shapes)
    if task == "detect":
        shape = rng.choice(shapes)
        return Example(image, task, "en", {"label": shape.kind}, detection_target(shape), shapes)
    kind = rng.choice(("color", "count", "left", "right"))
    if kind == "color":
        shape = rng.choice(shapes)
        return Example(image, "vqa", lang, {"question": question(kind, lang, shape)},
                       COLOR_WORDS[lang][shape.color], shapes)
    if kind == "count":
        return Example(image, "vqa", lang, {"question": question(kind, lang)}, str(len(shapes)), shapes)
    shape = shapes[0] if kind == "left" else shapes[-1]
    return Example(image, "vqa", lang, {"question": question(kind, lang)}, SHAPE_WORDS[lang][shape.kind], shapes)


def patch_targets(example: Example, grid: int, size: int = IMAGE_SIZE) -> dict[str, np.ndarray]:
    """Per-patch facts of a ``grid x grid`` patching, for pretraining the vision tower.

    ``kind`` and ``color`` are 0 for background (or text) and 1 + the index into ``SHAPES`` /
    ``COLORS`` where a shape covers more than a quarter of the patch; ``box`` holds that shape's
    ``ymin xmin ymax xmax`` as fractions of the image side. ``char`` is 0, or 1 + the index into
    ``ALPHABET`` of the letter whose box covers most of the patch (at least a quarter of it).
    """
    kind = np.zeros((grid, grid), np.int64)
    color = np.zeros((grid, grid), np.int64)
    box = np.zeros((grid, grid, 4), np.float32)
    patch = size // grid
    for shape in example.shapes:
        canvas = Image.new("RGB", (size, size))
        _draw_shape(ImageDraw.Draw(canvas), shape)
        covered = (np.asarray(canvas).max(-1) > 0).reshape(grid, patch, grid, patch).mean((1, 3)) > 0.25
        x0, y0, x1, y1 = shape.box
        kind[covered] = 1 + SHAPES.index(shape.kind)
        color[covered] = 1 + list(COLORS).index(shape.color)
        box[covered] = np.array([y0, x0, y1, x1], np.float32) / size
    char = np.zeros((grid, grid), np.int64)
    best = np.full((grid, grid), 0.25)
    edges = np.arange(grid + 1) * patch
    for letter, (x0, y0, x1, y1) in example.glyphs:
        cover_x = np.clip(np.minimum(edges[1:], x1) - np.maximum(edges[:-1], x0), 0, None) / patch
        cover_y = np.clip(np.minimum(edges[1:], y1) - np.maximum(edges[:-1], y0), 0, None) / patch
        cover = cover_y[:, None] * cover_x[None, :]
        wins = cover >= best
        char[wins], best[wins] = 1 + ALPHABET.index(letter), cover[wins]
    return {"kind": kind, "color": color, "box": box, "char": char}


def scene_targets(example: Example, size: int = IMAGE_SIZE) -> dict[str, np.ndarray]:
    """Whole-image facts per shape kind (present, colour, box), indexed like ``SHAPES``, and the
    rendered word (``word``: 0 for a scene, else 1 + its index into ``WORDS``)."""
    present = np.zeros(len(SHAPES), np.float32)
    color = np.zeros(len(SHAPES), np.int64)
    box = np.zeros((len(SHAPES), 4), np.float32)
    for shape in example.shapes:
        i = SHAPES.index(shape.kind)
        x0, y0, x1, y1 = shape.box
        present[i], color[i] = 1.0, 1 + list(COLORS).index(shape.color)
        box[i] = np.array([y0, x0, y1, x1], np.float32) / size
    word = np.int64(1 + WORDS.index(example.target) if example.task == "ocr" else 0)
    return {"present": present, "color": color, "box": box, "word": word}


def corpus() -> list[str]:
    """Every string the tasks can produce, for training the tokenizer's vocabulary."""
    texts = list(WORDS)
    for lang in LANGS:
        texts += COLOR_WORDS[lang].values()
        texts += SHAPE_WORDS[lang].values()
        for kind in _QUESTIONS:
            for shape in SHAPES:
                texts.append(question(kind, lang, Shape(shape, "red", (0, 0, 1, 1))))
        for a in SHAPES:
            for b in SHAPES:
                for ca in COLORS:
                    texts.append(caption([Shape(a, ca, (0, 0, 1, 1)), Shape(b, "blue", (0, 0, 1, 1))], lang))
    texts += [" ".join(str(n) for n in range(i, i + 10)) for i in range(0, 1000, 10)]
    return texts
