"""Tests of character vocabularies: deterministic order, specials, <unk>, chunked encoding, decoding."""

from __future__ import annotations

import pytest
import torch

from esper_text import vocabulary as vocabulary_module
from esper_text.vocabulary import END_OF_TEXT, UNKNOWN, CharVocabulary


def test_characters_are_distinct_and_in_code_point_order_after_the_specials() -> None:
    vocabulary = CharVocabulary.from_text("banana cafe\u00e9\n", specials=(UNKNOWN, END_OF_TEXT))
    assert vocabulary.characters == ("\n", " ", "a", "b", "c", "e", "f", "n", "\u00e9")
    assert vocabulary.size == 11
    assert vocabulary.unknown_id == 0 and vocabulary.special_id(END_OF_TEXT) == 1
    assert vocabulary.encode("abc").tolist() == [4, 5, 6]
    assert vocabulary == CharVocabulary.from_text("\u00e9fencba \n", specials=(UNKNOWN, END_OF_TEXT))


def test_unknown_characters_encode_to_unk_and_decode_as_its_name() -> None:
    vocabulary = CharVocabulary.from_text("abc", specials=(UNKNOWN,))
    ids = vocabulary.encode("a\u2603b\U0001f600c?")
    assert ids.dtype == torch.long
    assert ids.tolist() == [1, 0, 2, 0, 3, 0]
    assert vocabulary.decode(ids) == "a<unk>b<unk>c<unk>"


def test_without_unk_an_unknown_character_is_an_error() -> None:
    vocabulary = CharVocabulary.from_text("abc")
    assert vocabulary.unknown_id is None
    with pytest.raises(ValueError, match="character 'x' at position 2 is not in the vocabulary"):
        vocabulary.encode("abxx")
    with pytest.raises(KeyError, match="no special token"):
        vocabulary.special_id(END_OF_TEXT)


def test_lone_surrogates_from_json_escapes_are_characters_of_their_own() -> None:
    text = "a\ud800b"
    vocabulary = CharVocabulary.from_text(text)
    assert vocabulary.decode(vocabulary.encode(text)) == text


def test_chunked_building_and_encoding_match_one_piece(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 7 + "\u00e9\U0001f600"
    whole = CharVocabulary.from_text(text, specials=(UNKNOWN,))
    expected = whole.encode(text + "#")
    monkeypatch.setattr(vocabulary_module, "CHUNK_CHARACTERS", 5)
    chunked = CharVocabulary.from_text(text, specials=(UNKNOWN,))
    assert chunked == whole
    assert torch.equal(chunked.encode(text + "#"), expected)
    assert chunked.decode(expected) == text + UNKNOWN
    assert chunked.encode("").shape == (0,)


def test_characters_must_be_single_distinct_and_ordered() -> None:
    with pytest.raises(ValueError, match="single character"):
        CharVocabulary(characters=("ab",))
    with pytest.raises(ValueError, match="increasing code point order"):
        CharVocabulary(characters=("b", "a"))
