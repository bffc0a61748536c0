"""Caption tokenization as the COCO scorers see it, without Java; and segmentation for scripts
written without spaces.

``pycocoevalcap``'s ``PTBTokenizer`` pipes every caption through Stanford CoreNLP 3.4.1's
``PTBTokenizer -preserveLines -lowerCase`` and then drops the tokens in its punctuation list.
[`ptb_tokenize`][pali.eval.tokenize.ptb_tokenize] gives the same tokens on COCO-style captions; its
rules were learned by running the real tokenizer on many strings (``tests/test_eval_tokenize.py``
compares the two wherever ``java`` is installed). What it does, in the order it matters:

- lower-case everything; drop characters outside the Basic Multilingual Plane (emoji) and CJK
  corner brackets (the Java lexer calls them "untokenizable" and skips them); ``€`` reads ``$``,
  ``£`` ``#``, ``½`` ``1/2``;
- split off punctuation and symbols (``, ; : ? ! . " ' `` ( ) [ ] { } $ % & # * / + = < >``...),
  keep runs of ``?``/``!`` (``?!``, ``!!``) as one token, brackets as ``-lrb-``/``-rrb-``/``-lsb-``/
  ``-rsb-``/``-lcb-``/``-rcb-`` (the wrapper's list names them upper-case, so after ``-lowerCase``
  they are kept: a quirk of the official scorer we reproduce);
- keep words joined by an inner ``-``, ``.``, ``/``, ``_`` or ``'`` (``t-shirt``, ``u.s.``,
  ``and/or``, ``o'clock``), numbers with ``.``/``,``/``:``/``/`` (``1,000``, ``3.5``, ``10:30``);
- split clitics (``man's`` -> ``man 's``, ``don't`` -> ``do n't``, ``can't`` -> ``ca n't``,
  ``I'm``, ``we'll``...) and ``cannot``/``gonna``/``wanna``/``gotta``/``lemme``/``gimme``;
- keep the period of the abbreviations the lexer knows (``mr.``, ``dr.``, ``st.``, ``etc.``,
  months...; single letters with periods such as ``p.m.``), split it off other words;
- keep a single letter's period (``j. smith``) unless a word the lexer takes for a sentence start
  follows (``plan b. The``); join ``1 1/2`` into one token with a no-break space, as the lexer does;
- remove the tokens ``'' ' `` ` . ? ! , : - -- ... ;`` (the wrapper's list) and join with spaces.

Where it differs from the Java lexer (rare in captions; docs/evaluation.md lists them):
abbreviations outside the list above (US states...), HTML tags, glued operators (``c=d``) and a
few of the lexer's other guesses about sentence ends.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
import functools
import re
import shutil
import unicodedata

from .errors import MissingExtraError

#: What pycocoevalcap's PTBTokenizer removes after tokenizing (its ``PUNCTUATIONS``, as the
#: lower-cased tokens it actually meets: ``-LRB-`` & co. never match, see the module docstring).
REMOVED = frozenset({"''", "'", "``", "`", ".", "?", "!", ",", ":", "-", "--", "...", ";"})

# Abbreviations whose period the lexer keeps (probed: "the X. of it" with X lower-case and capitalised).
_ABBREVIATIONS = (
    "mr|mrs|ms|dr|st|jr|sr|vs|etc|inc|co|ltd|prof|gen|sen|rep|gov|jan|feb|mar|apr|aug|sept|sep|oct|nov|dec"
    "|mt|ave|blvd|rd|ft|dept|est|calif|corp|bros|sgt|capt|col|lt"
)
_QUOTES = "\"'`“”‘’‚«»‹›"  # not „ (U+201E): the lexer keeps it as a token
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_SAME_AS = {"€": "$", "£": "#", "½": "1/2", "…": "...", "–": "--", "—": "--"}
# Characters that never belong to a word: everything else that is not a space does (letters of
# every script, their combining marks, digits).
_PUNCT = r""".,;:!?"'`()\[\]{}<>$%&#*/\\+=~^|@\-“”„‘’‚«»‹›…–—€£¥½°±×÷¿¡•·→★©™。、，！？：；（）।॥،؟؛"""
# The lexer skips these (astral characters and corner brackets "untokenizable", zero-width joiners
# as spaces): each still ends a token.
_UNTOKENIZABLE = re.compile("[\U00010000-\U0010FFFF「」『』\u200c\u200d]")
_W = rf"[^\s{_PUNCT}]"  # a word character

_TOKEN = re.compile(
    rf"""
      (?:https?://|www\.)\S+                                   # URLs stay whole
    | [\w.+-]+@\w[\w-]*(?:\.\w[\w-]*)+                         # so do e-mail addresses
    | (?i:can)(?=not\b) | (?i:gon|wan)(?=na\b) | (?i:got)(?=ta\b) | (?i:lem|gim)(?=me\b)
    | {_W}+?(?=(?i:n't)\b)                                     # do|n't, ca|n't, wo|n't
    | (?i:n't)\b
    | '(?i:s|m|d|re|ve|ll)\b                                   # 's 'm 'd 're 've 'll
    | '(?i:em|cause)\b | (?<!')'\d0s\b | (?i:y')(?={_W}) | '(?i:t)(?=(?i:is|was)\b)
    | '(?i:n)'(?={_W}) | '(?i:n)\b                              # rock 'n' roll, more 'n
    | (?<![^\s(\[{{])[-+]\d+(?:[.,:/]\d+)*                      # a signed number after a space
    | \d+\xa0\d+/\d+                                             # 1 1/2 (see _chunks)
    | \d+(?:[.,:/]\d+)+                                        # 1,000 3.5 10:30 3/4
    | (?:[A-Za-z]\.){{2,}} | [A-Za-z]\.[A-Za-z]\b               # u.s. p.m. e.g
    | \b(?i:{_ABBREVIATIONS})\. | \bMass\. | \b[A-Za-z]\.          # mr. etc. J. (an initial)
    | [#@][^\W\d_][A-Za-z0-9_]*                                # #hashtag @home (not #1: "# 1")
    | {_W}+(?:(?:[-./_!?]|'(?!(?i:s|m|d|re|ve|ll|t|n)\b))(?={_W}){_W}+)*   # words, inner joiners kept
    | [?!]+ | \.\.+ | -+                                       # runs
    | \S                                                       # any other symbol, one by one
    """,
    re.VERBOSE,
)


def _normalize(text: str) -> str:
    """What the lexer does to the characters before tokenizing (beyond lower-casing)."""
    text = _UNTOKENIZABLE.sub(" ", text)  # skipped, but still a token boundary
    return text.replace("’", "'").replace("‘", "`")


_SPLIT_WORDS = frozenset({"cannot", "gonna", "wanna", "gotta", "lemme", "gimme"})
_KEEPS_PERIOD = frozenset(_ABBREVIATIONS.split("|")) | {"mass", "no"}
_SIMPLE_CHUNK = re.compile(r"([A-Za-z0-9]+)([,.;:!?]?)")


_INITIAL = re.compile(r"[A-Za-z]\.")


# After a single letter and a period, these capitalised words make the lexer split the period off
# as a sentence end ("plan B. The dog"); any other word keeps the initial ("J. Smith"). Probed.
_SENTENCE_STARTS = frozenset(
    "A An As At After But He Her Here If In It Many Now One Our She So Some That The Then There These They This "
    "We What When While You".split())


def _ends_sentence(chunks: list[str], n: int) -> bool:
    """Whether the lexer reads the period after a single letter in chunk ``n`` as a sentence end."""
    return n + 1 < len(chunks) and chunks[n + 1] in _SENTENCE_STARTS


_WHOLE_END = re.compile(r"(?:^|[^\w.,:/])\d+$")
_FRACTION = re.compile(r"\d+/\d+(?![\w/])")


def _chunks(text: str) -> list[str]:
    """White-space separated chunks, with "1 1/2" as one (the lexer joins a whole number and a
    fraction with a no-break space, U+00A0, into one token)."""
    chunks: list[str] = []
    for chunk in text.split():
        if chunks and _FRACTION.match(chunk) and _WHOLE_END.search(chunks[-1]):
            chunks[-1] += "\xa0" + chunk
        else:
            chunks.append(chunk)
    return chunks


@functools.lru_cache(maxsize=65536)
def ptb_tokenize(caption: str) -> str:
    """One caption as pycocoevalcap's ``PTBTokenizer`` returns it: lower-cased tokens, joined
    by spaces, punctuation tokens removed.

    >>> ptb_tokenize("A man's dog isn't happy, (really)!")
    "a man 's dog is n't happy -lrb- really -rrb-"
    """
    # Chunk by chunk: no token spans white space, and most chunks are a plain word.
    chunks = _chunks(_normalize(caption.replace("\n", " ")))
    tokens = []
    for n, chunk in enumerate(chunks):
        word = _SIMPLE_CHUNK.fullmatch(chunk)
        if word is not None and word[1].lower() not in _SPLIT_WORDS and (
                word[2] != "." or (word[1].lower() not in _KEEPS_PERIOD and len(word[1]) > 1)):
            tokens.append(word[1].lower())  # a plain word, maybe with a , . ; : ! or ? to drop
            continue
        if chunk.lower() == "no." and n + 1 < len(chunks) and chunks[n + 1][0].isdigit():
            tokens.append("no.")  # "No. 5": the lexer keeps the period before a number
            continue
        found = _TOKEN.findall(chunk)
        if found and _INITIAL.fullmatch(found[-1]) and chunk.endswith(found[-1]) and _ends_sentence(chunks, n):
            found[-1:] = [found[-1][0], "."]  # "J. Smith" keeps its initial, "plan B. Then" ends a sentence
        for token in found:
            token = _BRACKETS.get(token) or _SAME_AS.get(token) or token
            if token[0] in _QUOTES and len(token) == 1:
                continue
            if token.startswith(".."):
                token = "..."
            elif token.startswith("--") or token in "--":
                token = "--" if len(token) > 1 else "-"
            token = token.lower()
            if token not in REMOVED:
                tokens.append(token)
    return " ".join(tokens)


def tokenize_captions(captions: Mapping[object, Sequence[str]], tokenizer: str = "python") -> dict[object, list[str]]:
    """``{id: [caption, ...]}`` -> ``{id: [tokenized caption, ...]}``, in the scorers' input shape.

    ``tokenizer``: ``"python"`` ([`ptb_tokenize`][pali.eval.tokenize.ptb_tokenize], no Java) or
    ``"ptb"`` (pycocoevalcap's own ``PTBTokenizer``: needs ``java`` and the ``eval`` extra).
    """
    if tokenizer == "python":
        return {key: [ptb_tokenize(c) for c in texts] for key, texts in captions.items()}
    if tokenizer == "ptb":
        return java_ptb_tokenize(captions)
    raise ValueError(f"unknown tokenizer {tokenizer!r}: expected 'python' or 'ptb'")


def java_ptb_tokenize(captions: Mapping[object, Sequence[str]]) -> dict[object, list[str]]:
    """pycocoevalcap's ``PTBTokenizer`` itself (Stanford CoreNLP through ``java``)."""
    if shutil.which("java") is None:
        raise MissingExtraError("--tokenizer ptb runs Stanford's PTBTokenizer, which needs java on PATH "
                                "(Debian: apt install default-jre-headless); the default 'python' tokenizer does not")
    try:
        from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    except ImportError:
        raise MissingExtraError('the PTB tokenizer needs pycocoevalcap: pip install "pali-vlm[eval]"') from None
    keys = list(captions)
    # The wrapper keys its output by id and writes a temporary file beside its jar: give it
    # positional keys (ids may be any hashable) and keep its chatter (none) off our stdout.
    tokenized = PTBTokenizer().tokenize({i: [{"caption": c} for c in captions[k]] for i, k in enumerate(keys)})
    return {k: tokenized.get(i, []) for i, k in enumerate(keys)}


# -- scripts written without spaces (Crossmodal-3600) ---------------------------------------------

#: Languages of Crossmodal-3600 written without spaces between words.
UNSPACED_LANGUAGES = frozenset({"zh", "ja", "th"})


def _unspaced(c: str) -> bool:
    """Han, kana, Thai and their punctuation: each such character is its own token."""
    name = unicodedata.name(c, "")
    return name.startswith(("CJK ", "HIRAGANA", "KATAKANA", "THAI", "IDEOGRAPHIC", "FULLWIDTH", "HALFWIDTH"))


def segment_characters(text: str) -> str:
    """Character segmentation for unspaced scripts: every Han/kana/Thai character becomes a token
    (a Thai combining mark stays on its base character); other runs are tokenized as captions
    are (``ptb_tokenize``), punctuation dropped.

    >>> segment_characters("一只猫在沙发上。")
    '一 只 猫 在 沙 发 上'
    """
    out: list[str] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            tokenized = ptb_tokenize("".join(run))
            if tokenized:
                out.append(tokenized)
            run.clear()

    for c in text:
        if _unspaced(c):
            flush()
            if unicodedata.category(c).startswith("M") and out:
                out[-1] += c  # a Thai vowel or tone mark belongs to the consonant before it
            elif unicodedata.category(c)[0] in "LN":
                out.append(c.lower())
        else:
            run.append(c)
    flush()
    return " ".join(out)


def tokenize_for_language(texts: Iterable[str], lang: str) -> list[str]:
    """Tokenize captions of one language: character segmentation for ``UNSPACED_LANGUAGES``,
    the caption tokenizer for every other one."""
    segment = segment_characters if lang.split("-")[0].lower() in UNSPACED_LANGUAGES else ptb_tokenize
    return [segment(t) for t in texts]


__all__ = [
    "REMOVED",
    "UNSPACED_LANGUAGES",
    "java_ptb_tokenize",
    "ptb_tokenize",
    "segment_characters",
    "tokenize_captions",
    "tokenize_for_language",
]
