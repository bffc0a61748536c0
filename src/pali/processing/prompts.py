"""PaLI's task prompts (the pretraining mixture of arXiv 2209.06794) and languages.

Every task is "image + prompt -> text"; the prompt ends with the ``<extra_id_0>`` sentinel, as in
mT5's span-corruption pretraining, and the model writes what the sentinel stands for:

* captioning: ``Generate the alt_text in {lang} at {pos}: {prefix} <extra_id_0>`` (``prefix`` the
  start of the caption, ``pos`` its length in words: the paper's split-captioning);
* OCR: ``Generate the ocr_text in {lang}: <extra_id_0>``;
* VQA: ``Answer in {lang}: {question} <extra_id_0>``;
* VQG: ``Generate a question in {lang} for {answer}: <extra_id_0>``;
* detection: ``Detect {labels} <extra_id_0>`` with labels joined by `` ; ``, target
  ``ymin xmin ymax xmax label`` per object (see ``pali.tasks.heads.detect``). The paper describes the
  task and its target but we could not check its exact prompt wording offline; this one is ours.

``{lang}`` is one of mT5's 101 language codes (``LANGUAGES``; Hebrew is ``iw`` as in mC4,
``he`` is accepted). Whitespace is collapsed, which changes no token: sentencepiece does the same.

Other model families were trained on other wordings, so each family's are a named
[PromptSet][pali.processing.prompts.PromptSet] in `PROMPT_SETS` (``pali``: the above; ``blip2``,
``instructblip``, ``mblip``), chosen per checkpoint and saved in its processor config
(``ProcessorConfig.prompt_set``), so the heads ask every model in the words it learned. A task a
family was never trained on (BLIP-2 and detection, say) has no template: asking for it is an
[InputError][pali.InputError] naming the family, never a prompt the model cannot read.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import difflib

from ..errors import InputError

CAPTION = "Generate the alt_text in {lang} at {pos}: {prefix} <extra_id_0>"
OCR = "Generate the ocr_text in {lang}: <extra_id_0>"
VQA = "Answer in {lang}: {question} <extra_id_0>"
VQG = "Generate a question in {lang} for {answer}: <extra_id_0>"
DETECT = "Detect {labels} <extra_id_0>"
LABEL_SEPARATOR = " ; "

# mT5's 101 languages (the mC4 corpus, Xue et al. 2021), by mC4 code.
LANGUAGES: dict[str, str] = {
    "af": "Afrikaans", "am": "Amharic", "ar": "Arabic", "az": "Azerbaijani", "be": "Belarusian",
    "bg": "Bulgarian", "bn": "Bengali", "ca": "Catalan", "ceb": "Cebuano", "co": "Corsican",
    "cs": "Czech", "cy": "Welsh", "da": "Danish", "de": "German", "el": "Greek", "en": "English",
    "eo": "Esperanto", "es": "Spanish", "et": "Estonian", "eu": "Basque", "fa": "Persian",
    "fi": "Finnish", "fil": "Filipino", "fr": "French", "fy": "Western Frisian", "ga": "Irish",
    "gd": "Scottish Gaelic", "gl": "Galician", "gu": "Gujarati", "ha": "Hausa", "haw": "Hawaiian",
    "hi": "Hindi", "hmn": "Hmong", "ht": "Haitian Creole", "hu": "Hungarian", "hy": "Armenian",
    "id": "Indonesian", "ig": "Igbo", "is": "Icelandic", "it": "Italian", "iw": "Hebrew",
    "ja": "Japanese", "jv": "Javanese", "ka": "Georgian", "kk": "Kazakh", "km": "Khmer",
    "kn": "Kannada", "ko": "Korean", "ku": "Kurdish", "ky": "Kyrgyz", "la": "Latin",
    "lb": "Luxembourgish", "lo": "Lao", "lt": "Lithuanian", "lv": "Latvian", "mg": "Malagasy",
    "mi": "Maori", "mk": "Macedonian", "ml": "Malayalam", "mn": "Mongolian", "mr": "Marathi",
    "ms": "Malay", "mt": "Maltese", "my": "Burmese", "ne": "Nepali", "nl": "Dutch",
    "no": "Norwegian", "ny": "Chichewa", "pa": "Punjabi", "pl": "Polish", "ps": "Pashto",
    "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sd": "Sindhi", "si": "Sinhala",
    "sk": "Slovak", "sl": "Slovenian", "sm": "Samoan", "sn": "Shona", "so": "Somali",
    "sq": "Albanian", "sr": "Serbian", "st": "Sotho", "su": "Sundanese", "sv": "Swedish",
    "sw": "Swahili", "ta": "Tamil", "te": "Telugu", "tg": "Tajik", "th": "Thai", "tr": "Turkish",
    "uk": "Ukrainian", "ur": "Urdu", "uz": "Uzbek", "vi": "Vietnamese", "xh": "Xhosa",
    "yi": "Yiddish", "yo": "Yoruba", "zh": "Chinese", "zu": "Zulu",
}
ALIASES = {"he": "iw"}  # ISO 639-1 Hebrew; mC4 keeps the withdrawn code


def language(code: str) -> str:
    """The mC4 code for ``code`` (a code in any case, an alias, or an English language name)."""
    if not isinstance(code, str):
        raise InputError(f"language must be a str code such as 'en', got {type(code).__name__}")
    key = code.strip().lower()
    key = ALIASES.get(key, key)
    if key in LANGUAGES:
        return key
    by_name = {name.lower(): c for c, name in LANGUAGES.items()}
    if key in by_name:
        return by_name[key]
    near = difflib.get_close_matches(key, [*LANGUAGES, *by_name], n=5, cutoff=0.6)
    near_codes = dict.fromkeys(by_name.get(n, n) for n in near)
    hint = ", ".join(f"{c} ({LANGUAGES[c]})" for c in near_codes) or "none; see pali.processing.prompts.LANGUAGES"
    raise InputError(f"unknown language {code!r}; near matches: {hint}")


@dataclass(frozen=True)
class PromptSet:
    """One model family's task prompts; ``None``: the family was not trained on that task.

    Templates may use ``{lang}`` (the mC4 code), ``{language}`` (its English name, for families
    instructed in English sentences such as mBLIP's ``Describe the image in German.``),
    ``{question}``, ``{answer}``, ``{labels}`` and, in captions, ``{prefix}`` (the start of the
    caption) and ``{pos}`` (its length in words). A caption template without ``{prefix}`` cannot
    continue a caption. ``classify_template`` and ``languages`` are the family's defaults for
    the processor config fields of the same names (what classification scores, what it learned).
    """

    name: str
    caption: str
    vqa: str
    ocr: str | None = None
    vqg: str | None = None
    detect: str | None = None
    classify_template: str = "{label}"
    languages: tuple[str, ...] = ()

    def caption_prompt(self, lang: str = "en", prefix: str = "") -> str:
        """Caption (continue ``prefix``, if any) in ``lang``."""
        prefix = _text(prefix, "prefix", allow_empty=True)
        if prefix.strip() and "{prefix}" not in self.caption:
            raise InputError(f"the {self.name} prompt set cannot continue a caption: give no prefix")
        return self._render("caption", lang, prefix=prefix, pos=len(prefix.split()))

    def vqa_prompt(self, question: str, lang: str = "en") -> str:
        return self._render("vqa", lang, question=_text(question, "question"))

    def ocr_prompt(self, lang: str = "en") -> str:
        return self._render("ocr", lang)

    def vqg_prompt(self, answer: str, lang: str = "en") -> str:
        return self._render("vqg", lang, answer=_text(answer, "answer"))

    def detect_prompt(self, labels: str | Sequence[str]) -> str:
        """Detect every object of the given class(es)."""
        names = [labels] if isinstance(labels, str) else list(labels)
        if not names:
            raise InputError("detect needs at least one label")
        names = [_text(n, "label") for n in names]
        return self._render("detect", "en", labels=LABEL_SEPARATOR.join(names))

    def _render(self, task: str, lang: str, **fields: str | int) -> str:
        template = getattr(self, task)
        if template is None:
            raise InputError(
                f"{task} is not a task the {self.name} prompt set's models were trained on; "
                f"they do {', '.join(self.tasks)}"
            )
        code = language(lang)
        return _clean(template.format(lang=code, language=LANGUAGES[code], **fields))

    @property
    def tasks(self) -> list[str]:
        return [t for t in ("caption", "vqa", "ocr", "vqg", "detect") if getattr(self, t) is not None]


PALI = PromptSet("pali", CAPTION, VQA, ocr=OCR, vqg=VQG, detect=DETECT)
#: BLIP-2 (Flan-T5): captions from the "a photo of" prompt of its paper's zero-shot captioning,
#: VQA as "Question: {q} Answer:" (the paper's and transformers' examples); English only.
BLIP2 = PromptSet("blip2", "a photo of", "Question: {question} Answer:", languages=("en",))
#: InstructBLIP: the paper's instruction templates for short captions and short VQA answers.
INSTRUCTBLIP = PromptSet(
    "instructblip", "A short image description:", "Question: {question} Short answer:", languages=("en",)
)
#: mBLIP (mT0): English instructions naming the output language. Its model card gives the
#: captioning example "Describe the image in German."; the VQA wording is ours, in the same style.
MBLIP = PromptSet("mblip", "Describe the image in {language}.", "Answer in {language}: {question}")
PROMPT_SETS: dict[str, PromptSet] = {p.name: p for p in (PALI, BLIP2, INSTRUCTBLIP, MBLIP)}


def get_prompt_set(name: str | PromptSet) -> PromptSet:
    """The prompt set called ``name`` (a [PromptSet][pali.processing.prompts.PromptSet] is returned as is)."""
    if isinstance(name, PromptSet):
        return name
    if name not in PROMPT_SETS:
        raise InputError(f"unknown prompt set {name!r}; choose from {', '.join(PROMPT_SETS)}")
    return PROMPT_SETS[name]


def caption_prompt(lang: str = "en", prefix: str = "") -> str:
    """PaLI's caption prompt: caption (continue ``prefix``, if any) in ``lang``."""
    return PALI.caption_prompt(lang, prefix)


def ocr_prompt(lang: str = "en") -> str:
    return PALI.ocr_prompt(lang)


def vqa_prompt(question: str, lang: str = "en") -> str:
    return PALI.vqa_prompt(question, lang)


def vqg_prompt(answer: str, lang: str = "en") -> str:
    return PALI.vqg_prompt(answer, lang)


def detect_prompt(labels: str | Sequence[str]) -> str:
    """PaLI's detection prompt for the given class(es)."""
    return PALI.detect_prompt(labels)


def _text(value: str, what: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str):
        raise InputError(f"{what} must be a str, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise InputError(f"{what} is empty")
    return value


def _clean(text: str) -> str:
    return " ".join(text.split())
