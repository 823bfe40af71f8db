"""Character vocabularies: code points to token ids and back, encoded as whole tensors (no per-character Python)."""

from __future__ import annotations

import sys

import attrs
import torch

#: One past the largest Unicode code point: the size of the code point -> id lookup table.
CODE_POINT_LIMIT = 0x110000
UNKNOWN = "<unk>"
END_OF_TEXT = "<|endoftext|>"

# UTF-32 in the machine's byte order, so the bytes read back as native int32 code points. "surrogatepass"
# keeps lone surrogates (which JSON escapes can produce) as code points of their own.
_UTF32 = "utf-32-le" if sys.byteorder == "little" else "utf-32-be"


#: Characters converted per step, so that the transient UTF-32 copies stay small for large texts.
CHUNK_CHARACTERS = 1 << 22


def code_points(text: str) -> torch.Tensor:
    """The code points of ``text`` as an int64 tensor (one entry per Python character)."""
    if not text:
        return torch.zeros(0, dtype=torch.long)
    raw = bytearray(text.encode(_UTF32, "surrogatepass"))
    return torch.frombuffer(raw, dtype=torch.int32).long()


def _chunks(text: str) -> range:
    return range(0, len(text), CHUNK_CHARACTERS)


def _distinct(text: str) -> tuple[str, ...]:
    counts = torch.zeros(CODE_POINT_LIMIT, dtype=torch.long)
    for start in _chunks(text):
        counts += torch.bincount(code_points(text[start : start + CHUNK_CHARACTERS]), minlength=CODE_POINT_LIMIT)
    return tuple(chr(point) for point in counts.nonzero().flatten().tolist())


@attrs.frozen
class CharVocabulary:
    """Token ids of a character-level model: the ``specials`` first (ids 0..k-1), then ``characters``.

    ``characters`` are single characters in increasing code point order, so the same text always
    gives the same ids. With ``<unk>`` among the specials, a character outside the vocabulary encodes
    to it; without, encoding such a character is an error.
    """

    characters: tuple[str, ...]
    specials: tuple[str, ...] = ()
    _table: torch.Tensor = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if any(len(character) != 1 for character in self.characters):
            raise ValueError("every vocabulary character must be a single character")
        points = [ord(character) for character in self.characters]
        if points != sorted(set(points)):
            raise ValueError("vocabulary characters must be distinct and in increasing code point order")
        missing = self.unknown_id if self.unknown_id is not None else -1
        table = torch.full((CODE_POINT_LIMIT,), missing, dtype=torch.long)
        table[torch.tensor(points, dtype=torch.long)] = torch.arange(len(points)) + len(self.specials)
        object.__setattr__(self, "_table", table)

    @classmethod
    def from_text(cls, text: str, specials: tuple[str, ...] = ()) -> CharVocabulary:
        """The vocabulary of every distinct character in ``text`` (code point order) after ``specials``."""
        return cls(characters=_distinct(text), specials=specials)

    @property
    def size(self) -> int:
        return len(self.specials) + len(self.characters)

    @property
    def unknown_id(self) -> int | None:
        """The id of ``<unk>``, or None when this vocabulary has none."""
        return self.specials.index(UNKNOWN) if UNKNOWN in self.specials else None

    def special_id(self, name: str) -> int:
        if name not in self.specials:
            raise KeyError(f"vocabulary has no special token {name!r} (it has {list(self.specials)})")
        return self.specials.index(name)

    def encode(self, text: str) -> torch.Tensor:
        """Token ids (int64, one per character) of ``text``; ``ValueError`` naming the first character
        outside the vocabulary when there is no ``<unk>``."""
        ids = torch.empty(len(text), dtype=torch.long)
        for start in _chunks(text):
            ids[start : start + CHUNK_CHARACTERS] = self._table[code_points(text[start : start + CHUNK_CHARACTERS])]
        if self.unknown_id is None:
            outside = (ids < 0).nonzero().flatten()
            if outside.numel():
                position = int(outside[0])
                raise ValueError(
                    f"character {text[position]!r} at position {position} is not in the vocabulary"
                    f" ({outside.numel()} such characters)"
                )
        return ids

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """The text of ``ids``; special tokens appear as their names (e.g. ``<unk>``)."""
        symbols = self.specials + self.characters
        values = ids.tolist() if isinstance(ids, torch.Tensor) else ids
        return "".join([symbols[index] for index in values])
