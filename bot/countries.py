"""Country names as the UN writes them (UNTERM, via UN OCHA's hdx-python-country) and lookup.

The choosable list is the 197 States of the UNTERM list (UN Member States, the observer States
Holy See and State of Palestine, and Cook Islands and Niue, both Parties to the Protocol) plus
the European Union, itself a Party. Stored values are ISO 3166 alpha-2 codes in lower case, as
the BCH stores them; the European Union is "eu" (the code ISO 3166 reserves for it).
"""

from __future__ import annotations

import difflib
import logging
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from babel import Locale

logger = logging.getLogger(__name__)

EU = "eu"
LANGUAGES = ("ar", "en", "es", "fr", "ru", "zh")
_COLUMN = {"ar": "Arabic", "en": "English", "es": "Spanish", "fr": "French", "ru": "Russian",
           "zh": "Chinese"}
# UNTERM entry for the European Union (a Party, but not in the list of States).
_EU_NAMES = {"ar": "الاتحاد الأوروبي", "en": "European Union", "es": "Unión Europea",
             "fr": "Union européenne", "ru": "Европейский союз", "zh": "欧洲联盟"}
# Abbreviations officials type that neither UNTERM short names nor CLDR carry.
_ALIASES = {EU: ("EU", "UE", "ЕС"), "us": ("США", "EE. UU.", "EEUU"),
            "cn": ("中华人民共和国", "КНР"), "ae": ("ОАЭ",), "gb": ("UK",), "za": ("ЮАР",),
            "cd": ("RDC", "DRC", "ДРК")}
MAX_CANDIDATES = 5
_ARABIC_LETTERS = str.maketrans({"أ": "ا", "إ": "ا", "آ": "ا", "ٱ": "ا", "ة": "ه", "ى": "ي",
                                 "ـ": None})
_CJK = re.compile(r"[\u3400-\u9fff]")
_VARIANT = "\x00"  # marks index keys derived from part of a name


def name_key(text: str) -> str:
    """What two spellings of one name share: no case, accents, punctuation, Arabic variants."""
    text = unicodedata.normalize("NFKD", text.casefold()).translate(_ARABIC_LETTERS)
    out = []
    for ch in text:
        category = unicodedata.category(ch)
        if category in ("Mn", "Me", "Cf"):
            continue
        out.append(" " if category[0] in "PSZC" else ch)
    words = "".join(out).split()
    if words and words[0] in ("the", "l", "la", "le", "les", "el"):
        words = words[1:]  # "the Russian Federation", "l'Ouganda"
    if all(_CJK.match(w) for w in words):
        return "".join(words)
    return " ".join(words)


@dataclass(frozen=True, slots=True)
class UnCountry:
    code: str  # ISO alpha-2 in lower case; "eu" for the European Union
    alpha3: str | None
    m49: str | None
    short: Mapping[str, str]  # UNTERM short name per language
    formal: str | None  # UNTERM formal name (English: the only language hdx carries)


@dataclass(frozen=True, slots=True)
class CountryMatch:
    """A lookup result: one country, or the closest few for the respondent to choose from."""

    code: str | None
    candidates: tuple[str, ...] = ()


class CountryTable:
    """The choosable countries, their names, and a name index built once."""

    def __init__(self, countries: Iterable[UnCountry], regexes: Mapping[str, re.Pattern[str]],
                 extra_names: Iterable[tuple[str, str, str, bool]]) -> None:
        self.countries = {c.code: c for c in sorted(countries, key=lambda c: c.code)}
        self._regexes = regexes
        self._names = {lang: {c.code: c.short[lang] for c in self.countries.values()}
                       for lang in LANGUAGES}
        # key -> {code: languages whose names give that key}; UNTERM names first, so that
        # "Congo" is the Congo even though ISO writes "Congo (the Democratic Republic of the)".
        self._official: dict[str, dict[str, set[str]]] = {}
        self._other: dict[str, dict[str, set[str]]] = {}
        self._codes: dict[str, str] = {}
        for c in self.countries.values():
            for lang, name in c.short.items():
                self._add(self._official, name, c.code, lang)
            if c.formal:
                self._add(self._official, c.formal, c.code, "en")
            for code in (c.code, c.alpha3):
                if code:
                    self._codes[code.casefold()] = c.code
        for code, lang, name, official in extra_names:
            if code in self.countries:
                self._add(self._official if official else self._other, name, code, lang)
        for index in (self._official, self._other):
            for variant in [k for k in index if k.startswith(_VARIANT)]:
                key = variant[len(_VARIANT):]
                if key not in self._official:
                    for code, langs in index[variant].items():
                        self._other.setdefault(key, {}).setdefault(code, set()).update(langs)
                del index[variant]
        self._keys = list(dict.fromkeys([*self._official, *self._other]))

    @staticmethod
    def _add(index: dict[str, dict[str, set[str]]], name: str, code: str, lang: str) -> None:
        key = name_key(name)
        if key:
            index.setdefault(key, {}).setdefault(code, set()).add(lang)
        # "Iran (Islamic Republic of)" is also "Iran"; never above a whole name.
        for variant in (name.split("(")[0], name.split(",")[0]):
            short = name_key(variant)
            if short and short != key:
                index.setdefault(_VARIANT + short, {}).setdefault(code, set()).add(lang)

    def _names_of(self, key: str) -> Iterable[str]:
        return [*self._official.get(key, ()), *self._other.get(key, ())]

    def __contains__(self, code: object) -> bool:
        return code in self.countries

    def names(self, lang: str) -> dict[str, str]:
        return self._names[lang]

    def name(self, lang: str, code: str) -> str:
        return self._names[lang].get(code.lower(), code.upper())

    def lookup(self, text: str, lang: str, *, fuzzy: bool = True) -> CountryMatch:
        """The country `text` names; `fuzzy` also tries parts of names and close spellings
        (about 20 ms: only where an exact match failed and a near one is wanted)."""
        key = name_key(text)
        if not key:
            return CountryMatch(None)
        found = self._official.get(key) or self._other.get(key)
        if found:
            if len(found) == 1:
                return CountryMatch(next(iter(found)))
            own = [code for code, langs in found.items() if lang in langs]
            if len(own) == 1:
                return CountryMatch(own[0])
            return CountryMatch(None, tuple(sorted(found, key=lambda c: self.name(lang, c))))
        code = self._codes.get(text.strip().casefold().rstrip("."))
        if code:
            return CountryMatch(code)
        return self._near(text, key) if fuzzy else CountryMatch(None)

    def _near(self, text: str, key: str) -> CountryMatch:
        """Part of a name, the English variants hdx knows ("Ivory Coast"), close spellings."""
        long_enough = len(key) >= (2 if _CJK.match(key) else 4)
        inside = _unique(code for k in self._keys if _has_word(k, key)
                         for code in self._names_of(k)) if long_enough else []
        folded = text.casefold()
        by_regex = [code for code, rx in self._regexes.items() if rx.search(folded)]
        if len(inside) == 1 and (not by_regex or by_regex == inside):
            return CountryMatch(inside[0])
        if len(by_regex) == 1 and not inside:
            return CountryMatch(by_regex[0])
        close = difflib.get_close_matches(key, self._keys, n=MAX_CANDIDATES * 2, cutoff=0.7)
        ranked = _unique([*by_regex, *inside,
                          *(code for k in close for code in self._names_of(k))])
        return CountryMatch(None, tuple(ranked[:MAX_CANDIDATES]))


def _has_word(name: str, part: str) -> bool:
    """`part` starts a word of `name` ("korea" in "republic of korea"; "刚果" in "刚果金")."""
    at = name.find(part)
    while at >= 0:
        if at == 0 or name[at - 1] == " " or _CJK.match(part):
            return True
        at = name.find(part, at + 1)
    return False


def _unique(codes: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(codes))


@lru_cache(maxsize=1)
def country_table() -> CountryTable:
    """Built on first use from the data file shipped in hdx-python-country (never the network)."""
    from hdx.location.country import Country

    data = Country.countriesdata(use_live=False)
    countries: list[UnCountry] = []
    regexes: dict[str, re.Pattern[str]] = {}
    extra: list[tuple[str, str, str, bool]] = []
    for iso3, row in data["countries"].items():
        if row.get("Appears in UNTERM list") != "Y":
            continue
        code = row["ISO 3166-1 Alpha 2-Codes"].lower()
        short = {lang: row[f"{col} Short"] for lang, col in _COLUMN.items()}
        countries.append(UnCountry(code, iso3, row.get("m49 numerical code"), short,
                                   row.get("English Formal")))
        for lang, col in _COLUMN.items():
            if row.get(f"M49 {col}"):
                extra.append((code, lang, row[f"M49 {col}"], True))
        for column in ("Preferred Term", "ISO Alt Term", "RW Short Name"):
            if row.get(column):
                extra.append((code, "en", row[column], False))
        alias = data["aliases"].get(iso3)
        if alias is not None:
            regexes[code] = alias
    countries.append(UnCountry(EU, None, None, _EU_NAMES, None))
    extra += [(code, lang, name, False) for code, names in _ALIASES.items()
              for name in names for lang in LANGUAGES]
    for lang in LANGUAGES:  # everyday names (CLDR), accepted as input, never displayed
        for territory, name in Locale(lang).territories.items():
            if territory.isalpha() and len(territory) == 2:
                extra.append((territory.lower(), lang, name, False))
    return CountryTable(countries, regexes, extra)
