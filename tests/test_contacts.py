"""The contacts file of `capbot invite`: encodings, delimiters and bad rows (bot/contacts.py)."""

from __future__ import annotations

import codecs

import pytest

from bot.contacts import ContactsError, read_contacts

ROWS = ("email,name,organization,country,language\n"
        "ana@example.org,Ana Pérez,Ministerio,España,es\n"
        "bad-address,X,Y,Spain,en\n"
        "ANA@Example.org,Ana again,Y,Spain,es\n"
        "li@example.cn,李,部,中国,zh\n"
        "jo@example.org,Jo,Z,Atlantis,en\n"
        "kl@example.org,Kl,Z,FR,xx\n"
        "mo@example.org,Mo,Z,fra,\n")


def _check(good, bad):
    assert [(c.email, c.country, c.language) for c in good] == [
        ("ana@example.org", "esp", "es"), ("li@example.cn", "chn", "zh"),
        ("mo@example.org", "fra", "en")]
    assert [(b.line, b.reason.split()[0]) for b in bad] == [
        (3, "invalid"), (4, "duplicate"), (6, "unknown"), (7, "unknown")]


@pytest.mark.parametrize("encode", [
    lambda t: t.encode("utf-8"),
    lambda t: codecs.BOM_UTF8 + t.encode("utf-8"),
    lambda t: t.replace(",", "\t").encode("utf-16"),  # Excel "Unicode text"
    lambda t: t.replace(",", ";").encode("utf-8"),
], ids=["utf8", "utf8-bom", "utf16-tab", "semicolon"])
def test_encodings_and_bad_rows(tmp_path, encode):
    path = tmp_path / "c.csv"
    path.write_bytes(encode(ROWS))
    _check(*read_contacts(path))


def test_cp1252(tmp_path):
    path = tmp_path / "c.csv"
    path.write_bytes("email,name,organization,country,language\n"
                     "zoe@example.fr,Zoé Noël,Ministère,France,\n".encode("cp1252"))
    (good,), bad = read_contacts(path)
    assert (good.name, good.country, good.language, bad) == ("Zoé Noël", "fra", "en", [])


@pytest.mark.parametrize("content,problem", [(b"", "empty"), (b"  \n", "empty"),
                                             (b"name,country\nA,FR\n", "'email'")])
def test_refused(tmp_path, content, problem):
    path = tmp_path / "c.csv"
    path.write_bytes(content)
    with pytest.raises(ContactsError) as err:
        read_contacts(path)
    assert err.value.line == 1 and problem in err.value.problem
