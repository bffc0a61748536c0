"""VQA accuracy exactly as the official VQAv2 script computes it (GT-Vision-Lab/VQA, ``vqaEval.py``).

Per question: the prediction and the (usually 10) human answers are cleaned of newlines, tabs and
outer spaces; *only if the human answers are not all identical* are they (and the prediction)
normalized: punctuation (``processPunctuation``) then digits, articles and contractions
(``processDigitArticle``). The accuracy is the mean over the answers ``a`` of
``min(1, #(other answers equal to the prediction) / 3)``: the 10 leave-one-out subsets. Overall,
per answer type and per question type: the mean of those, x100, rounded to 2 places the way the
script's Python 2 ``round`` does (half away from zero). Quirks kept on purpose, because the
published numbers have them: the normalization is skipped when the answers agree (so ``"Yes"``
against ten ``"yes"`` scores 0); ``\\d`` is ASCII; the period-stripping pass stops after 32
replacements (the script passes ``re.UNICODE`` where ``sub`` takes its count); an answer is "left
out" by comparing whole answer records, so records without ``answer_id`` that are equal leave out
together. Tested against the script's own output (``tests/fixtures/vqa_official/``).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
import re

from .captions import check_predictions
from .errors import AnnotationFormatError
from .ids import align
from .result import EvalResult

# The script's tables, in its own order (the punctuation loop's order changes results).
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_DIGITS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
           "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've", "couldnt": "couldn't",
    "couldn'tve": "couldn't've", "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", "hasnt": "hasn't",
    "havent": "haven't", "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's", "howd": "how'd",
    "howll": "how'll", "hows": "how's", "Id've": "I'd've", "I'dve": "I'd've", "Im": "I'm", "Ive": "I've",
    "isnt": "isn't", "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll", "let's": "let's",
    "maam": "ma'am", "mightnt": "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've", "neednt": "needn't", "notve": "not've",
    "oclock": "o'clock", "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've", "she'dve": "she'd've", "she's": "she's",
    "shouldve": "should've", "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd", "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've", "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've",
    "someonell": "someone'll", "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've", "somethingll": "something'll",
    "thats": "that's", "thered": "there'd", "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd", "theyd've": "they'd've",
    "they'dve": "they'd've", "theyll": "they'll", "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've", "weve": "we've", "werent": "weren't",
    "whatll": "what'll", "whatre": "what're", "whats": "what's", "whatve": "what've", "whens": "when's",
    "whered": "where'd", "wheres": "where's", "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's", "whove": "who've", "whyll": "why'll",
    "whyre": "why're", "whys": "why's", "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all", "yall'll": "y'all'll",
    "y'allll": "y'all'll", "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've",
    "youd": "you'd", "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll", "youre": "you're",
    "youve": "you've",
}
# Python 2's re (the script's) reads \d as [0-9] in a pattern compiled without re.UNICODE.
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)", re.ASCII)
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)", re.ASCII)  # sic: a lookahead for "<=", not a lookbehind
_PERIOD_STRIP_COUNT = 32  # the script passes re.UNICODE (32) as sub's count


def process_punctuation(text: str) -> str:
    """The script's ``processPunctuation``."""
    out = text
    strip_all = _COMMA_STRIP.search(text) is not None
    for p in _PUNCT:
        if strip_all or p + " " in text or " " + p in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def process_digit_article(text: str) -> str:
    """The script's ``processDigitArticle``: number words to digits, articles out, contractions in."""
    words = [_DIGITS.get(w, w) for w in text.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def normalize_answer(answer: str) -> str:
    """Both passes, as applied when a question's answers disagree."""
    return process_digit_article(process_punctuation(answer))


def _clean(answer: str) -> str:
    return answer.replace("\n", " ").replace("\t", " ").strip()


def py2_round(x: float, places: int) -> float:
    """Python 2's ``round``: the nearest multiple of 10**-places, ties away from zero (on the exact
    binary value); Python 3's rounds ties to even."""
    return float(Decimal(x).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP))


@dataclass(frozen=True)
class VqaAnnotation:
    """One question's human answers and types. ``answer_records``: each answer's other fields
    (``answer_id``, ``answer_confidence``) as the script compares whole records when it leaves
    one out; ``None`` means all records differ (each answer is one person's)."""

    answers: tuple[str, ...]
    answer_type: str | None = None
    question_type: str | None = None
    answer_records: tuple[tuple, ...] | None = None


def question_accuracy(prediction: str, annotation: VqaAnnotation) -> float:
    """One question's accuracy in [0, 1] (before x100 and rounding)."""
    answers = [_clean(a) for a in annotation.answers]
    prediction = _clean(prediction)
    if len(set(answers)) > 1:
        answers = [normalize_answer(a) for a in answers]
        prediction = normalize_answer(prediction)
    records = annotation.answer_records or tuple((i,) for i in range(len(answers)))
    entries = list(zip(answers, records))
    scores = []
    for entry in entries:
        matches = sum(1 for other in entries if other != entry and other[0] == prediction)
        scores.append(min(1.0, matches / 3))
    return sum(scores) / len(scores)


def _as_annotation(key: Hashable, value) -> VqaAnnotation:
    if isinstance(value, VqaAnnotation):
        annotation = value
    elif isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        annotation = VqaAnnotation(tuple(value))
    else:
        raise AnnotationFormatError(f"references: id {key!r} is {type(value).__name__}, expected a list of answers")
    if not annotation.answers or not all(isinstance(a, str) for a in annotation.answers):
        raise AnnotationFormatError(f"references: id {key!r} needs a non-empty list of answer strings")
    return annotation


def score_vqa(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str] | VqaAnnotation], *,
              allow_partial: bool = False, precision: int = 2) -> EvalResult:
    """VQA accuracy with per-question scores; see [`vqa_accuracy`][pali.eval.vqa_accuracy]."""
    check_predictions(predictions)
    annotations = {k: _as_annotation(k, v) for k, v in references.items()}
    ids, coverage = align(predictions, annotations, allow_partial=allow_partial)
    overall: list[float] = []
    by_question: dict[str, list[float]] = {}
    by_answer: dict[str, list[float]] = {}
    per_item = {}
    for key in ids:
        annotation = annotations[key]
        accuracy = question_accuracy(predictions[key], annotation)
        overall.append(accuracy)
        if annotation.question_type is not None:
            by_question.setdefault(annotation.question_type, []).append(accuracy)
        if annotation.answer_type is not None:
            by_answer.setdefault(annotation.answer_type, []).append(accuracy)
        per_item[key] = {"accuracy": py2_round(100 * accuracy, precision)}

    def mean(values: list[float]) -> float:
        return py2_round(100 * float(sum(values)) / len(values), precision)

    metrics = {
        "overall": mean(overall),
        "perQuestionType": {t: mean(v) for t, v in by_question.items()},
        "perAnswerType": {t: mean(v) for t, v in by_answer.items()},
    }
    return EvalResult(metrics, per_item, coverage)


def vqa_accuracy(predictions: Mapping[Hashable, str], references: Mapping[Hashable, Sequence[str] | VqaAnnotation], *,
                 allow_partial: bool = False, precision: int = 2) -> dict:
    """VQAv2 accuracy as the official script reports it.

    ``predictions``: ``{question id: answer}``; ``references``: ``{question id: [10 human
    answers]}`` or ``{question id: VqaAnnotation(...)}`` (answer and question types give the
    ``perAnswerType``/``perQuestionType`` breakdowns). Returns ``{"overall": 63.02,
    "perQuestionType": {...}, "perAnswerType": {...}}``: percentages rounded to ``precision``
    places, as the script's ``accuracy`` dict. Missing predictions are an error unless
    ``allow_partial``.
    """
    return score_vqa(predictions, references, allow_partial=allow_partial, precision=precision).metrics


