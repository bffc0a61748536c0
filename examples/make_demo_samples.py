"""Write the sample images ``pali demo`` runs on (held-out seed, never seen in training), with
the answers the synthetic world says are right, so the demo can score itself.

The samples are the first three scenes and two words the seed draws, as drawn: picking samples the
model happens to get right would make the demo's score say nothing.

    python examples/make_demo_samples.py src/pali/bundled/samples
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synthetic  # noqa: E402


def expected_answers(shapes: list[synthetic.Shape]) -> list[dict]:
    """A caption per language, then colour questions about each shape and a count, in en and fr."""
    answers = [{"task": "caption", "lang": lang, "answer": synthetic.caption(shapes, lang)} for lang in synthetic.LANGS]
    for lang in ("en", "fr"):
        for shape in shapes:
            answers.append({"task": "vqa", "lang": lang, "question": synthetic.question("color", lang, shape),
                            "answer": synthetic.COLOR_WORDS[lang][shape.color]})
        answers.append({"task": "vqa", "lang": lang, "question": synthetic.question("count", lang),
                        "answer": str(len(shapes))})
    return answers


SEED = 2026


def main(out: Path, seed: int = SEED) -> None:
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    samples = []
    for i in range(3):
        image, shapes = synthetic.random_scene(rng)
        name = f"shapes{i + 1}.png"
        image.save(out / name)
        samples.append({
            "file": name,
            "shapes": [{"kind": s.kind, "color": s.color, "box": list(s.box)} for s in shapes],
            "answers": expected_answers(shapes),
        })
    for i in range(2):
        word = rng.choice(synthetic.WORDS)
        name = f"word{i + 1}.png"
        synthetic.word_image(rng, word)[0].save(out / name)
        samples.append({"file": name, "word": word})
    (out / "samples.json").write_text(json.dumps(samples, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
