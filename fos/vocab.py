"""The one vocabulary table: how each category is spelled where.

A category's *class* is its name in photos and libraries (MSRC's spelling: ``aeroplane``, ``body``); its
*phrase word* is what a referring phrase says (``person``); its other names are COCO's and the words a
person may type (``airplane``, ``people``). Categories spelled the same everywhere are not listed.
"""
from __future__ import annotations

# class -> (phrase word, other names: COCO's first, then typed ones)
CATEGORIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "aeroplane": ("aeroplane", ("airplane",)),
    "body": ("person", ("person", "people", "man", "woman")),
}
# typed words that are not categories -> the word phrases use
WORDS = {"grey": "gray", "center": "middle", "centre": "middle", "large": "big", "little": "small"}
# COCO names that MSRC spells differently (the data converter's mapping)
COCO = {"airplane": "aeroplane", "person": "body"}


def photo_class(name: str) -> str:
    """A dataset's class name -> the class (COCO's ``airplane`` -> ``aeroplane``, ``person`` -> ``body``)."""
    return COCO.get(name, name)


def phrase_word(cls: str) -> str:
    """A class -> the word phrases use (``body`` -> ``person``)."""
    return CATEGORIES.get(cls, (cls,))[0]


def class_of_word(word: str) -> str:
    """A phrase word -> the class (``person`` -> ``body``); unlisted words are their own class."""
    for cls, (w, _) in CATEGORIES.items():
        if w == word:
            return cls
    return word


def typed_word(word: str) -> str:
    """A typed word -> the word phrases use (``airplane`` -> ``aeroplane``, ``people`` -> ``person``,
    ``grey`` -> ``gray``)."""
    for cls, (w, others) in CATEGORIES.items():
        if word in others:
            return w
    return WORDS.get(word, word)


def spellings(cls: str) -> list[str]:
    """Every name of a class, the class first (to find it in a library named another way)."""
    w, others = CATEGORIES.get(cls, (cls, ()))
    return list(dict.fromkeys([cls, w, *others]))
