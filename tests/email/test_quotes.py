"""strip_reply: quote headers, Outlook blocks and signatures in the six languages, answers kept."""

from __future__ import annotations

import pytest

from handlers.email.quotes import is_answer_line, strip_reply

ANSWERS = "1. Maria Lopez\n3: Ministry of Environment\n4. 2\n12. 2023-05"
QUOTED = "> 1. Your full name\n> 4. How many? 1 = one, 2 = two\n> 12. Start (YYYY-MM)"
FORM = "1. Your full name\n4. How many? 1 = one, 2 = two\n12. Start (YYYY-MM)"

ATTRIBUTIONS = {
    "en_gmail": "On Mon, Mar 3, 2025 at 10:00 AM Capacity Bot <bot@example.org> wrote:",
    "en_gmail_wrapped": "On Mon, Mar 3, 2025 at 10:00 AM Capacity Bot <\nbot@example.org> wrote:",
    "en_gmail_wrapped_verb": "On Mon, Mar 3, 2025 at 10:00 AM Capacity Bot <bot@example.org>\n"
    "wrote:",
    "en_apple": "On Mar 3, 2025, at 10:00, Capacity Bot <bot@example.org> wrote:",
    "en_thunderbird": "On 3/3/25 10:00, Capacity Bot wrote:",
    "en_name_only": "Capacity Bot wrote:",
    "fr_gmail": "Le lun. 3 mars 2025 à 10:00, X <x@y.org> a écrit :",
    "fr_gmail_nbsp": "Le lun. 3 mars 2025 à 10:00, X <x@y.org> a écrit\u00a0:",
    "fr_gmail_wrapped": "Le lun. 3 mars 2025 à 10:00, Capacity Bot <bot@example.org> a\nécrit :",
    "fr_thunderbird": "Le 03/03/2025 à 10:00, Capacity Bot a écrit :",
    "es_gmail": "El lun, 3 mar 2025 a las 10:00, X (<x@y.org>) escribió:",
    "es_apple": "El 3 mar 2025, a las 10:00, X <x@y.org> escribió:",
    "es_thunderbird": "El 3/3/25 a las 10:00, Capacity Bot escribió:",
    "ru_gmail": "пн, 3 мар. 2025 г. в 10:00, X <x@y.org>:",
    "ru_gmail_wrapped": "пн, 3 мар. 2025 г. в 10:00, Capacity Bot <\nbot@example.org>:",
    "ru_apple": "3 марта 2025 г., в 10:00, X <x@y.org> написал(а):",
    "ru_thunderbird": "03.03.2025 10:00, Capacity Bot пишет:",
    "ru_thebat": "Вы писали 3 марта 2025 г., 10:00:",
    "zh_gmail": "2025年3月3日周一 10:00，X <x@y.org> 写道：",
    "zh_gmail_name_first": "X <x@y.org> 于2025年3月3日周一 10:00写道：",
    "zh_apple": "在 2025年3月3日，10:00，X <x@y.org> 写道：",
    "zh_traditional": "X <x@y.org> 於 2025年3月3日 週一 上午10:00 寫道：",
    "ar_gmail": "في الاثنين، 3 مارس 2025 في 10:00 ص، X <x@y.org> كتب:",
    "ar_gmail_bidi": "\u200fفي الاثنين، 3 مارس 2025 في 10:00 ص، \u202aX\u202c\u200f "
    "<\u202ax@y.org\u202c\u200f> كتب:",
    "ar_apple": "في 3 مارس 2025، الساعة 10:00 ص، كتب X <x@y.org>:",
    "ar_thunderbird": "في 3/3/25 10:00 ص، كتب Capacity Bot:",
    "ar_gmail_written_by": "في الاثنين، 3 مارس 2025 في 10:00 ص تمت كتابة ما يلي بواسطة "
    "X <x@y.org>:",
}


@pytest.mark.parametrize("attribution", ATTRIBUTIONS.values(), ids=ATTRIBUTIONS.keys())
def test_top_posted_reply_above_attribution(attribution: str) -> None:
    text = f"Hello,\n\n{ANSWERS}\n\nMaria\n\n{attribution}\n\n{QUOTED}\n"
    assert strip_reply(text) == f"Hello,\n\n{ANSWERS}\n\nMaria"


@pytest.mark.parametrize("attribution", ATTRIBUTIONS.values(), ids=ATTRIBUTIONS.keys())
def test_attribution_strips_even_without_quote_prefixes(attribution: str) -> None:
    # Some clients (and HTML rendered as text) drop the ">" marks: the attribution still cuts.
    text = f"{ANSWERS}\n{attribution}\n{FORM}\n"
    assert strip_reply(text) == ANSWERS


OUTLOOK = {
    "en": "________________________________\nFrom: Capacity Bot <bot@example.org>\n"
    "Sent: Monday, March 3, 2025 10:00 AM\nTo: Maria Lopez <m@example.org>\n"
    "Subject: Questionnaire",
    "en_original": "-----Original Message-----\nFrom: Capacity Bot [mailto:bot@example.org]\n"
    "Sent: Monday, March 3, 2025 10:00 AM\nTo: Maria\nSubject: Questionnaire",
    "en_cc_wrapped_to": "From: Capacity Bot <bot@example.org>\nSent: Monday, March 3, 2025\n"
    "To: Maria Lopez <m@example.org>; Juan Perez\n<j@example.org>\nCc: x@example.org\n"
    "Subject: Questionnaire",
    "fr": "-----Message d'origine-----\nDe : Capacity Bot <bot@example.org>\n"
    "Envoyé : lundi 3 mars 2025 10:00\nÀ : Marie <m@example.org>\nObjet : Questionnaire",
    "fr_no_separator": "De : Capacity Bot <bot@example.org>\nEnvoyé : lundi 3 mars 2025 10:00\n"
    "À : Marie <m@example.org>\nObjet : Questionnaire",
    "es": "________________________________\nDe: Capacity Bot <bot@example.org>\n"
    "Enviado: lunes, 3 de marzo de 2025 10:00\nPara: María <m@example.org>\n"
    "Asunto: Cuestionario",
    "es_original": "-----Mensaje original-----\nDe: Capacity Bot\nFecha: 3/3/25\nPara: María\n"
    "Asunto: Cuestionario",
    "ru": "-----Исходное сообщение-----\nОт: Capacity Bot <bot@example.org>\n"
    "Отправлено: 3 марта 2025 г. 10:00\nКому: Иван <i@example.org>\nТема: Анкета",
    "ru_no_separator": "От: Capacity Bot <bot@example.org>\nОтправлено: 3 марта 2025 г. 10:00\n"
    "Кому: Иван <i@example.org>\nТема: Анкета",
    "zh": "-----原始邮件-----\n发件人: Capacity Bot <bot@example.org>\n"
    "发送时间: 2025年3月3日 10:00\n收件人: 王芳 <w@example.org>\n主题: 问卷",
    "zh_fullwidth": "发件人：Capacity Bot <bot@example.org>\n发送时间：2025年3月3日 10:00\n"
    "收件人：王芳\n主题：问卷",
    "ar": "-----الرسالة الأصلية-----\nمن: Capacity Bot <bot@example.org>\n"
    "تم الإرسال: الاثنين، 3 مارس، 2025 10:00 ص\nإلى: أحمد <a@example.org>\nالموضوع: استبيان",
    "ar_underscores": "________________________________\nمن: Capacity Bot <bot@example.org>\n"
    "تم الإرسال: الاثنين، 3 مارس، 2025 10:00 ص\nإلى: أحمد\nالموضوع: استبيان",
    "samsung_es": "-------- Mensaje original --------\nDe: Capacity Bot <bot@example.org>\n"
    "Fecha: 3/3/25 10:00 (GMT-05:00)\nPara: María\nAsunto: Cuestionario",
    "gmail_forward": "---------- Forwarded message ---------\nFrom: Capacity Bot <bot@x.org>\n"
    "Date: Mon, Mar 3, 2025 at 10:00 AM\nSubject: Questionnaire\nTo: <m@example.org>",
    "apple_forward_fr": "Début du message réexpédié :\n\nDe: Capacity Bot <bot@x.org>\n"
    "Objet: Questionnaire\nDate: 3 mars 2025 à 10:00:00 UTC+1\nÀ: m@example.org",
}


@pytest.mark.parametrize("block", OUTLOOK.values(), ids=OUTLOOK.keys())
def test_outlook_blocks_cut_everything_below(block: str) -> None:
    text = f"{ANSWERS}\n\nMaria\n\n{block}\n\n{FORM}\n\nCapacity Bot\n"
    assert strip_reply(text) == f"{ANSWERS}\n\nMaria"


@pytest.mark.parametrize("block", OUTLOOK.values(), ids=OUTLOOK.keys())
def test_nothing_above_an_outlook_block_leaves_nothing(block: str) -> None:
    # Below an unquoted Outlook block the old form is not ">"-marked: its "1. …" lines are
    # questions, not answers, and must not come back.
    assert strip_reply(f"{block}\n\n{FORM}\n") == ""


MOBILE = [
    "Sent from my iPhone",
    "Sent from my Samsung Galaxy smartphone.",
    "Sent from Outlook for iOS",
    "Get Outlook for Android<https://aka.ms/AAb9ysg>",
    "Sent from Yahoo Mail on Android",
    "Envoyé de mon iPhone",
    "Envoyé depuis mon appareil Galaxy",
    "Télécharger Outlook pour Android",
    "Enviado desde mi iPhone",
    "Enviado desde mi smartphone Samsung Galaxy.",
    "Obtener Outlook para Android",
    "Отправлено с iPhone",
    "Отправлено из мобильной Почты Mail.ru",
    "Получить Outlook для Android",
    "发自我的iPhone",
    "发自我的 iPhone",
    "从我的iPhone发送",
    "获取 Outlook for Android",
    "أرسلت من الـ iPhone الخاص بي",
    "تم الإرسال من iPhone الخاص بي",
    "احصل على Outlook لـ Android",
]


@pytest.mark.parametrize("line", MOBILE)
def test_mobile_signature_at_the_end_is_dropped(line: str) -> None:
    assert strip_reply(f"{ANSWERS}\n\n{line}\n") == ANSWERS
    assert strip_reply(f"{ANSWERS}\n\n{line}\n\n> {ATTRIBUTIONS['en_apple']}\n{QUOTED}") == ANSWERS


def test_mobile_signature_in_the_middle_is_kept() -> None:
    text = "Sent from my iPhone\n1. Maria"
    assert strip_reply(text) == text


def test_dash_dash_signature() -> None:
    text = f"{ANSWERS}\n\n-- \nMaria Lopez\n+1 555 0100\n1. not an answer, a signature\n"
    assert strip_reply(text) == ANSWERS
    # Some clients strip the trailing space of the delimiter.
    assert strip_reply(f"{ANSWERS}\n--\nMaria\n") == ANSWERS


def test_bottom_posting_keeps_interleaved_answers() -> None:
    text = (
        f"{ATTRIBUTIONS['en_gmail']}\n> 1. Your full name\n1. Maria Lopez\n>\n"
        "> 3. Organization\n3: Ministry of Environment\n> 4. How many?\n\n4. 2\n\n"
        "> 12. Start\n12. 2023-05\n> Thank you\n\n-- \nMaria\n"
    )
    assert strip_reply(text) == (
        "1. Maria Lopez\n3: Ministry of Environment\n\n4. 2\n\n12. 2023-05"
    )


def test_bottom_posting_without_attribution() -> None:
    text = f"{QUOTED}\n1. Maria Lopez\n> more quote\n4. 2\n"
    assert strip_reply(text) == "1. Maria Lopez\n4. 2"


def test_greeting_above_interleaved_answers_keeps_both() -> None:
    text = f"Hi,\n\n{ATTRIBUTIONS['fr_gmail']}\n> 1. Nom\n1. Marie\n> 4. Combien ?\n4. 2\n"
    assert strip_reply(text) == "Hi,\n\n1. Marie\n4. 2"


def test_top_posted_answers_ignore_text_below_the_quote() -> None:
    text = f"{ANSWERS}\n\n{ATTRIBUTIONS['en_gmail']}\n{QUOTED}\nSome footer a gateway added\n"
    assert strip_reply(text) == ANSWERS


def test_nested_quotes_are_dropped() -> None:
    text = "1. Maria\n\n>> 1. older\n> > 1. old\n>4. 2\n"
    assert strip_reply(text) == "1. Maria"


@pytest.mark.parametrize(
    "text",
    [
        "1. Maria Lopez\n3: Ministry of Environment\n12. 2023-05",
        "De: mi ministerio\n1. María",  # a lone "De:" line is no Outlook block
        "3. De: Ministerio\n4. Para: todos\n5. Asunto: ninguno",  # labels inside answers
        "From: the Ministry\nTo: the Secretariat\n1. Maria",  # two labels, no third
        "5. Le 3 mars 2025 à 10:00, X a écrit :",  # answer-shaped lines are never headers
        "2. 03.03.2025 10:00, Maria wrote:",
        "Voici mes réponses :\n1. Marie",
        "以下是我的回答：\n1. 王芳",
        "إليكم إجاباتي:\n1. أحمد",
        "Ответы:\n1. Иван\n2: Министерство: департамент",
        "1. ----------\n2. ____",
        "Note: see 10:00 meeting <x@y.org>\n1. Maria",  # no final colon: no attribution
        "",
    ],
)
def test_text_without_quotes_is_left_alone(text: str) -> None:
    assert strip_reply(text) == text


def test_crlf_and_whitespace_are_tidied() -> None:
    text = "\r\n\r\n1. Maria   \r\n\r\n\r\n\r\n4. 2\r\n\r\n"
    assert strip_reply(text) == "1. Maria\n\n4. 2"


def test_separator_without_header_block_is_text() -> None:
    text = "1. Maria\n____________________\n4. 2"
    assert strip_reply(text) == text


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("1. Maria", True),
        ("4) 2", True),
        ("12: 2023-05", True),
        ("3、张三", True),
        ("２．王芳", True),
        ("١. نعم", True),
        ("5.", True),
        ("03.03.2025 10:00, X wrote:", False),
        ("2023-05", False),
        ("Maria 1.", False),
    ],
)
def test_is_answer_line(line: str, expected: bool) -> None:
    assert is_answer_line(line) is expected
