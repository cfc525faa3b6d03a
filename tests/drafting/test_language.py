"""Language detection: en/ru by script, fallbacks for short, mixed and emoji-only text."""

from __future__ import annotations

import pytest

from frankly.drafting.language import detect_language, script_counts

ENGLISH = [
    "Where is my card? I ordered it two weeks ago.",
    "How do I reset my password",
    "refund",
    "ok",
    "Can't log in since yesterday's update!!",
]
RUSSIAN = [
    "Где моя карта? Заказал две недели назад.",
    "Как сбросить пароль",
    "возврат",
    "да",
    "Не приходит SMS с кодом",  # a Latin acronym inside Russian text
]


@pytest.mark.parametrize("text", ENGLISH)
def test_english(text: str) -> None:
    assert detect_language(text) == "en"


@pytest.mark.parametrize("text", RUSSIAN)
def test_russian(text: str) -> None:
    assert detect_language(text) == "ru"


@pytest.mark.parametrize(
    "text",
    ["", "   ", "👍", "🙂🙂🙂 ❤️", "12345", "?!", "a", "https://example.com/x"],
)
def test_too_short_or_emoji_only_falls_back(text: str) -> None:
    assert detect_language(text, fallback="en") == "en"
    assert detect_language(text) is None


def test_mixed_script_falls_back() -> None:
    assert detect_language("Привет hello друг friend", fallback="xx") == "xx"


def test_restricted_to_allowed_languages() -> None:
    assert detect_language("Где моя карта?", allowed=("en",)) is None
    assert detect_language("Где моя карта?", allowed=("en",), fallback="en") == "en"
    assert detect_language("Where is my card?", allowed=("ru",)) is None
    assert detect_language("Where is my card?", allowed=()) is None


def test_urls_and_mentions_do_not_count() -> None:
    text = "Где посылка? https://shop.example.com/orders/track @support"
    assert script_counts(text).get("latin", 0) == 0
    assert detect_language(text) == "ru"


def test_transliterated_russian_is_latin() -> None:
    # A known limitation: Latin-script Russian looks like English to every detector.
    assert detect_language("privet, gde moya karta?") == "en"


def test_same_script_languages_use_the_model_or_fall_back() -> None:
    result = detect_language(
        "Bonjour, je n'ai toujours pas reçu ma carte bancaire.",
        allowed=("en", "fr"),
        fallback="en",
    )
    assert result in {"fr", "en"}
    assert detect_language("ok", allowed=("en", "fr"), fallback=None) is None
