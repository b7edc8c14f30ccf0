"""Respondent language detection (six UN languages) and the language-choice policy."""

from __future__ import annotations

import json
import logging
import re
import threading
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

LANGUAGES = ("ar", "en", "es", "fr", "ru", "zh")

# Thresholds from /work/shared/notes/language-detection.md ("length is the gate").
CONFIDENT_LETTERS = 40  # Latin script: switch even when the text looks like another language
ASK_LETTERS = 20  # Latin script: switch unless the text looks like another language
MAX_CHARS = 2000  # only the beginning of a long text is looked at
SEED = 0  # langdetect is random; a fixed seed makes it repeatable
MIN_PROB = 0.9  # a restricted langdetect run below this is a close call: ask
OTHER_PROB = 0.5  # unrestricted langdetect: "another language" from this probability
DOMINANT_SHARE = 0.8  # below this share of (weighted) letters the text is "mixed": never confident
HAN_WEIGHT = 2  # one Han character carries about as much as two alphabetic letters

LATIN_LANGUAGES = ("en", "es", "fr")
_LANGDETECT_TO_OURS = {
    "ar": "ar",
    "en": "en",
    "es": "es",
    "fr": "fr",
    "ru": "ru",
    "zh-cn": "zh",
    "zh-tw": "zh",
}
_RESTRICTED_PRIOR = dict.fromkeys(_LANGDETECT_TO_OURS, 1.0)

# Letters that Arabic does not use (Persian, Urdu, Pashto, Sindhi, Kurdish...).
_NON_ARABIC_LETTERS = frozenset(
    "پچژگکی"  # Persian (and Urdu, Pashto...)
    "ٹڈڑںہھےۓۃ"  # Urdu
    "ښڅځډړږګڼۍې"  # Pashto
    "ۆێڕڵۇۈۋە"  # Kurdish, Uyghur
)
# Cyrillic letters Russian does not use (Ukrainian, Belarusian, Serbian, Macedonian, Kazakh...).
_NON_RUSSIAN_CYRILLIC = frozenset(
    "іїєґўјљњћџђѓќѕәғқңөұүһҗҷҳӣӯӑӧӱҕҡҙҫӊӈ" + "ІЇЄҐЎЈЉЊЋЏЂЃЌЅӘҒҚҢӨҰҮҺҖҶҲӢӮӐӦӰҔҠҘҪӉӇ"
)
# Letters only Russian uses among the common Cyrillic languages (not Ukrainian/Belarusian/Serbian).
_RUSSIAN_ONLY = frozenset("ыэъёЫЭЪЁ")
_RUSSIAN_VOWELS = frozenset("ыэёЫЭЁ")  # not in Bulgarian, Macedonian, Serbian, Ukrainian
_CYRILLIC_LOOKALIKES = frozenset({"bg", "mk", "uk"})  # langdetect's other Cyrillic languages

_QUOTED_LINE_RE = re.compile(r"^[ \t]*>.*$", re.MULTILINE)
_FOOTER_RE = re.compile(
    r"(?im)^[ \t]*(?:sent from my \w+|get outlook for \w+|enviado desde mi \w+|"
    r"envoyé de mon \w+|отправлено с (?:моего )?\w+|发自我的\w+|"
    r"أرسلت من \S+)[^\n]*$"
)
_URL_RE = re.compile(
    r"(?i:\b(?:https?://|ftp://|www\.))\S+"
    r"|(?<![\w.-])[a-z0-9-]{1,63}(?:\.[a-z0-9-]{1,63})*"
    r"\.(?:com|org|net|int|gov|edu|info|io|[a-z]{2})(?:/\S*)?\b"
)
_EMAIL_RE = re.compile(r"(?<![\w.+-])[\w.+-]{1,64}@[\w-]{1,63}(?:\.[\w-]{1,63})+")
_COMMAND_RE = re.compile(r"(?<!\S)[/@][A-Za-z_][\w@]*")
_ANSI_RE = re.compile(r"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|[@-_])")  # terminal escape sequences
_SPACES_RE = re.compile(r"\s+")
_DROP_INSIDE_WORDS = dict.fromkeys(map(ord, "\u00ad\u200c\u200d\u2060\ufeff\u0640"), None)

# Scripts of letters.
_LATIN, _CYRILLIC, _ARABIC, _HAN, _KANA, _HANGUL, _OTHER = (
    "latin",
    "cyrillic",
    "arabic",
    "han",
    "kana",
    "hangul",
    "other",
)


@dataclass(frozen=True, slots=True)
class Detection:
    """What the text says about the respondent's language.

    ``language`` is the language to use when ``confident``; otherwise it is the best guess among
    the six (a candidate for pre-selection only) or None. ``other`` means the text looks like a
    language outside the six (then a confident detection says "en": show English with the
    six-language menu).
    """

    language: str | None  # one of LANGUAGES or None
    confident: bool
    other: bool  # text looks like a language outside the six
    letters: int
    method: str  # "empty", "script", "langdetect", "mixed", "error"
    candidates: tuple[str, ...] = ()


_EMPTY = Detection(None, False, False, 0, "empty", ())


def _script(ch: str) -> str:
    cp = ord(ch)
    if cp < 0x0250:
        return _LATIN  # Basic Latin, Latin-1, Latin Extended-A/B (letters only reach here)
    if 0x0400 <= cp <= 0x052F or 0x1C80 <= cp <= 0x1C8F or 0x2DE0 <= cp <= 0x2DFF:
        return _CYRILLIC
    if 0xA640 <= cp <= 0xA69F:
        return _CYRILLIC
    if 0x0600 <= cp <= 0x06FF or 0x0750 <= cp <= 0x077F or 0x08A0 <= cp <= 0x08FF:
        return _ARABIC
    if 0xFB50 <= cp <= 0xFDFF or 0xFE70 <= cp <= 0xFEFF:
        return _ARABIC
    if 0x3040 <= cp <= 0x30FF or 0x31F0 <= cp <= 0x31FF or 0xFF66 <= cp <= 0xFF9F:
        return _KANA
    if 0xAC00 <= cp <= 0xD7AF or 0x1100 <= cp <= 0x11FF or 0x3130 <= cp <= 0x318F:
        return _HANGUL
    if (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x3FFFF
        or 0xF900 <= cp <= 0xFAFF
        or cp in (0x3005, 0x3007)
    ):
        return _HAN
    if 0x0250 <= cp <= 0x02AF or 0x1E00 <= cp <= 0x1EFF or 0x2C60 <= cp <= 0x2C7F:
        return _LATIN
    if 0xA720 <= cp <= 0xA7FF or 0xAB30 <= cp <= 0xAB6F:
        return _LATIN
    return _OTHER


def clean_text(text: str) -> str:
    """Keep the words of ``text``: no quoted lines, footers, URLs, e-mails, commands, digits,
    punctuation, symbols, emoji or invisible characters; single spaces between words."""
    text = text[:MAX_CHARS]
    text = unicodedata.normalize("NFKC", text)
    text = text.translate(_DROP_INSIDE_WORDS)
    text = _ANSI_RE.sub(" ", text)
    text = _QUOTED_LINE_RE.sub(" ", text)
    text = _FOOTER_RE.sub(" ", text)
    text = _EMAIL_RE.sub(" ", text)
    text = _URL_RE.sub(" ", text)
    text = _COMMAND_RE.sub(" ", text)
    out = []
    for ch in text:
        if ch.isalpha() or unicodedata.category(ch)[0] == "M":
            out.append(ch)
        else:
            out.append(" ")
    return _SPACES_RE.sub(" ", "".join(out)).strip()


def _count_scripts(text: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for ch in text:
        if ch.isalpha():
            script = _script(ch)
            counts[script] = counts.get(script, 0) + 1
    return counts


_PROFILES = (
    "ar", "en", "es", "fr", "ru", "zh-cn", "zh-tw",
    "af", "ca", "cs", "cy", "da", "de", "et", "fi", "hr", "hu", "id", "it", "lt", "lv", "nl",
    "no", "pl", "pt", "ro", "sk", "sl", "so", "sq", "sv", "sw", "tl", "tr", "vi",
    "bg", "mk", "uk", "fa",
)


class LanguageDetector:
    """Detects which of the six languages a respondent wrote in.

    Create it once: it loads 39 of langdetect's profiles (~0.3 s, ~23 MB). ``detect`` is
    safe to call from several threads (each call builds its own seeded langdetect
    ``Detector``, so answers are repeatable; the profiles are read-only) and quick enough
    for the event loop: under 1 ms for Arabic/Chinese/Cyrillic, ~2 ms for short Latin
    text, ~10 ms for Latin text of 20+ letters (two langdetect runs), ~20-30 ms at most
    (the 2,000-character cap).
    """

    def __init__(self, *, seed: int = SEED) -> None:
        from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory

        factory = DetectorFactory()
        # Only the profiles that can matter: the six, the Latin-script languages the
        # unrestricted run must recognise as "other", and the Cyrillic/Arabic-script
        # neighbours the guards ask about. 23 MB instead of 63 MB for all 55.
        factory.load_json_profile([
            (Path(PROFILES_DIRECTORY) / name).read_text(encoding="utf-8")
            for name in _PROFILES])
        factory.set_seed(seed)
        # The two "factories": one whose detectors only consider the six languages (prior 1 for
        # them; languages missing from the prior map get 0 in set_prior_map, and a 0 prior stays
        # 0 because the update multiplies), one unrestricted to notice languages outside the six.
        # They share the profiles, which are read-only once loaded.
        self._factory = factory
        self._restricted_prior = dict(_RESTRICTED_PRIOR)

    # -- langdetect -------------------------------------------------------------------------

    def _probabilities(self, text: str, *, restricted: bool) -> list[tuple[str, float]]:
        from langdetect.lang_detect_exception import LangDetectException

        detector = self._factory.create()
        detector.set_max_text_length(MAX_CHARS)
        if restricted:
            detector.set_prior_map(self._restricted_prior)
        detector.append(text)
        try:
            return [(item.lang, item.prob) for item in detector.get_probabilities()]
        except LangDetectException:
            return []

    def _latin(self, text: str, letters: int, n: int) -> Detection:
        """Latin script (``n`` letters): langdetect restricted to the six picks en/es/fr, an
        unrestricted run spots other languages."""
        upper = sum(1 for ch in text if ch.isupper())
        if upper * 2 > n:
            text = text.lower()  # langdetect skips words written in capitals
        restricted = self._probabilities(text, restricted=True)
        ranked = [(lang, p) for lang, p in restricted if lang in LATIN_LANGUAGES]
        candidates = tuple(lang for lang, _ in ranked)
        label, prob = ranked[0] if ranked else (None, 0.0)
        if label is None or n < ASK_LETTERS:  # under 20 letters: never switch on text alone
            return Detection(label, False, False, letters, "langdetect", candidates)
        unrestricted = self._probabilities(text, restricted=False)
        foreign = [(lang, p) for lang, p in unrestricted if lang not in LATIN_LANGUAGES]
        ours = sum(p for lang, p in unrestricted if lang in LATIN_LANGUAGES)
        if foreign and foreign[0][1] >= OTHER_PROB and ours < 1 - OTHER_PROB:
            if n >= CONFIDENT_LETTERS:  # another language: English with the language menu
                return Detection("en", True, True, letters, "langdetect", candidates)
            return Detection(label, False, True, letters, "langdetect", candidates)
        # Doubt: a close call in the restricted run, the unrestricted run prefers another of
        # en/es/fr, or (under 40 letters) it sees another language at all.
        top = unrestricted[0][0] if unrestricted else label
        doubt = (
            prob < MIN_PROB
            or (top in LATIN_LANGUAGES and top != label)
            or (n < CONFIDENT_LETTERS and bool(foreign))
        )
        return Detection(label, not doubt, False, letters, "langdetect", candidates)

    def _cyrillic(self, text: str, letters: int, n: int) -> Detection:
        guard = sum(1 for ch in text if ch in _NON_RUSSIAN_CYRILLIC)
        russian = sum(1 for ch in text if ch in _RUSSIAN_ONLY)
        if guard and guard * 50 >= n and guard >= russian:  # at least 2 % of the letters
            return _script_other("ru", letters, n)
        if n >= CONFIDENT_LETTERS and not any(ch in _RUSSIAN_VOWELS for ch in text):
            # Long text without ы/э/ё: let langdetect check for Bulgarian, Macedonian...
            # (it is unreliable on short Cyrillic text). When it doubts Russian, ask.
            unrestricted = self._probabilities(text, restricted=False)
            if (
                unrestricted
                and unrestricted[0][0] in _CYRILLIC_LOOKALIKES
                and unrestricted[0][1] >= MIN_PROB
                and all(lang != "ru" for lang, _ in unrestricted)
            ):
                return Detection("ru", False, True, letters, "langdetect", ("ru",))
        return Detection("ru", True, False, letters, "script", ("ru",))

    @staticmethod
    def _arabic(text: str, letters: int, n: int) -> Detection:
        guard = sum(1 for ch in text if ch in _NON_ARABIC_LETTERS)
        if guard and guard * 50 >= n:  # at least 2 % of the letters
            return _script_other("ar", letters, n)
        return Detection("ar", True, False, letters, "script", ("ar",))

    @staticmethod
    def _han(letters: int, counts: dict[str, int]) -> Detection:
        han = counts[_HAN]
        kana = counts.get(_KANA, 0)
        hangul = counts.get(_HANGUL, 0)
        if (kana and kana * 20 >= han) or (hangul and hangul * 20 >= han):  # Japanese, Korean
            return _script_other("zh", letters, han + kana + hangul)
        return Detection("zh", True, False, letters, "script", ("zh",))

    # -- public -------------------------------------------------------------------------------

    def detect(self, text: Any) -> Detection:
        """Detect the language of ``text``; never raises."""
        try:
            return self._detect(text)
        except Exception:  # never let language detection break a conversation
            logger.exception("language detection failed")
            return Detection(None, False, False, 0, "error", ())

    def _detect(self, text: Any) -> Detection:
        if isinstance(text, bytes | bytearray):
            text = bytes(text[: MAX_CHARS * 4]).decode("utf-8", "replace")
        elif not isinstance(text, str):
            return _EMPTY
        cleaned = clean_text(text)
        counts = _count_scripts(cleaned)
        letters = sum(counts.values())
        if not letters:
            return _EMPTY

        weighted = {s: n * (HAN_WEIGHT if s == _HAN else 1) for s, n in counts.items()}
        script = max(weighted, key=lambda s: (weighted[s], s == _LATIN))
        if len(counts) > 1:
            cleaned = "".join(ch if _script(ch) == script else " " for ch in cleaned)
        n = counts[script]  # the letters the decision rests on
        if script == _LATIN:
            detection = self._latin(cleaned, letters, n)
        elif script == _CYRILLIC:
            detection = self._cyrillic(cleaned, letters, n)
        elif script == _ARABIC:
            detection = self._arabic(cleaned, letters, n)
        elif script == _HAN:
            detection = self._han(letters, counts)
        else:  # kana, hangul, Greek, Hebrew, Devanagari, Thai...
            detection = _script_other(None, letters, n)
        if weighted[script] < DOMINANT_SHARE * sum(weighted.values()):
            detection = replace(detection, confident=False, method="mixed")
        return detection


def _script_other(guess: str | None, letters: int, n: int) -> Detection:
    """A script (or letters) of a language outside the six: the Latin length gates apply."""
    if n >= CONFIDENT_LETTERS:
        return Detection("en", True, True, letters, "script", ())
    return Detection(guess, False, True, letters, "script", (guess,) if guess else ())


_default: LanguageDetector | None = None
_default_lock = threading.Lock()


def get_detector() -> LanguageDetector:
    """The process-wide detector, built on first use (call it at start-up to pay the ~0.3 s)."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = LanguageDetector()
    return _default


def detect(text: str) -> Detection:
    """Shortcut for ``get_detector().detect(text)``."""
    return get_detector().detect(text)


# -- language tags and the choice policy ------------------------------------------------------

_TAG_ALIASES = {
    "ara": "ar",
    "arb": "ar",
    "arz": "ar",
    "ary": "ar",
    "apc": "ar",
    "acm": "ar",
    "eng": "en",
    "spa": "es",
    "fra": "fr",
    "fre": "fr",
    "rus": "ru",
    "zho": "zh",
    "chi": "zh",
    "cmn": "zh",
}
_TAG_SPLIT_RE = re.compile(r"[,\s]+")


def normalize_language_tag(tag: Any) -> str | None:
    """Map a BCP 47 tag, locale or header value to one of the six languages, else None.

    "fr-CA" → "fr", "zh-Hans"/"zh_TW" → "zh", "ar-EG" → "ar", "en_US.UTF-8" → "en",
    "pt-BR" → None. In a list ("de-DE, en;q=0.8") the first of the six wins.
    """
    if not isinstance(tag, str) or not tag:
        return None
    for part in _TAG_SPLIT_RE.split(tag[:200]):
        part = part.split(";", 1)[0].split(".", 1)[0].split("@", 1)[0]
        primary = part.replace("_", "-").split("-", 1)[0].strip().lower()
        primary = _TAG_ALIASES.get(primary, primary)
        if primary in LANGUAGES:
            return primary
    return None


def resolve_language(
    *,
    stored: str | None,
    explicit: bool,
    hint: str | None,
    detection: Detection | None,
) -> tuple[str | None, bool]:
    """Pick the respondent's language: (language, needs_confirmation).

    1. A stored explicit choice is final.
    2. A confident detection (text of 20+ Latin letters, or Arabic/Chinese/Cyrillic script);
       when the text looks like another language the detection says "en" and confirmation is
       needed (show English with the six-language menu).
    3. A stored language that the respondent did not choose (kept, still to be confirmed).
    4. The channel hint (Telegram language_code, e-mail Content-Language), normalized.
    5. None.
    needs_confirmation is False only for an explicit choice or a confident detection.
    """
    stored_lang = normalize_language_tag(stored) if stored else None
    if explicit and stored_lang:
        return stored_lang, False
    if detection is not None and detection.confident and detection.language in LANGUAGES:
        return detection.language, detection.other
    if stored_lang:
        return stored_lang, True
    return normalize_language_tag(hint), True


# -- JSON / CLI -------------------------------------------------------------------------------


def detection_to_json(text: str, detection: Detection) -> dict[str, Any]:
    """The JSON object printed by ``capbot detect-language`` for one line."""
    # Text in a language outside the six has no language of ours: say so, and give the
    # language the bot would answer in (English, with the six-language menu) on its own.
    return {
        "text": text,
        "language": None if detection.other else detection.language,
        "confident": detection.confident and not detection.other,
        "other": detection.other,
        "reply_language": "en" if detection.other else (detection.language or "en"),
        "letters": detection.letters,
        "method": detection.method,
        "candidates": list(detection.candidates),
    }


def _no_surrogates(text: str) -> str:
    if any("\ud800" <= ch <= "\udfff" for ch in text):
        return "".join("\ufffd" if "\ud800" <= ch <= "\udfff" else ch for ch in text)
    return text


def _lines(stdin: Any) -> Iterable[str]:
    source = getattr(stdin, "buffer", stdin)
    first = True
    for raw in source:
        if isinstance(raw, bytes | bytearray):
            line = bytes(raw).decode("utf-8", "replace")
        else:
            line = _no_surrogates(raw)
        if first:
            line = line.removeprefix("\ufeff")
            first = False
        yield line.rstrip("\r\n")


def run_detect_language(stdin: Any, stdout: Any) -> int:
    """Read lines from ``stdin``; write one JSON object per line to ``stdout`` (UTF-8)."""
    detector = get_detector()
    binary = getattr(stdout, "buffer", None)
    try:
        if binary is not None:
            stdout.flush()
        for line in _lines(stdin):
            record = json.dumps(detection_to_json(line, detector.detect(line)), ensure_ascii=False)
            if binary is not None:
                binary.write(record.encode("utf-8") + b"\n")
                binary.flush()
            else:
                stdout.write(record + "\n")
                stdout.flush()
    except BrokenPipeError:
        return 0
    return 0
