"""The small built-in world that the embedded tasks and the tiny base model's corpus share.

Fixed facts (objects and their colour, material, size, place and use; people; days;
activities), not random ones: the tiny base model reads these facts in its pretraining
corpus (`zflora.harness.tinybase.general_corpus`) and the embedded tasks ask about them in a
format the corpus never shows, so adapting to a task is about the task's format.
Seeds only choose which facts a generated text uses.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Thing:
    """An everyday object and its properties (`use` reads after "used for ...")."""

    name: str
    colour: str
    material: str
    size: str
    place: str
    use: str


# Every property has exactly four values, each held by six of the 24 objects, and the
# multiple-choice questions always list a property's four values in this order, so the
# letter follows from the value and the question tests the fact (see embedded.commonsense).
COLOURS: tuple[str, ...] = ("white", "black", "red", "blue")
MATERIALS: tuple[str, ...] = ("wood", "metal", "plastic", "cloth")
SIZES: tuple[str, ...] = ("tiny", "small", "big", "huge")
PLACES: tuple[str, ...] = ("kitchen", "bedroom", "garden", "office")

# name, colour, material, size, place, use. Every use is unique.
_THINGS = [
    ("spoon", "white", "plastic", "tiny", "kitchen", "stirring soup"),
    ("kettle", "black", "metal", "small", "kitchen", "boiling water"),
    ("fridge", "white", "metal", "huge", "kitchen", "keeping food cold"),
    ("cutting board", "red", "wood", "small", "kitchen", "chopping vegetables"),
    ("oven mitt", "blue", "cloth", "small", "kitchen", "holding hot pans"),
    ("kitchen table", "blue", "wood", "huge", "kitchen", "eating dinner"),
    ("pillow", "white", "cloth", "small", "bedroom", "resting your head"),
    ("blanket", "red", "cloth", "big", "bedroom", "keeping warm at night"),
    ("wardrobe", "black", "wood", "huge", "bedroom", "storing clothes"),
    ("alarm clock", "red", "plastic", "tiny", "bedroom", "waking up on time"),
    ("lamp", "blue", "cloth", "small", "bedroom", "lighting the room"),
    ("bed", "white", "wood", "huge", "bedroom", "sleeping at night"),
    ("shovel", "red", "metal", "big", "garden", "digging holes"),
    ("hose", "blue", "plastic", "big", "garden", "watering plants"),
    ("bench", "black", "plastic", "big", "garden", "sitting outside"),
    ("bucket", "blue", "plastic", "small", "garden", "carrying water"),
    ("hammock", "white", "cloth", "big", "garden", "resting in the shade"),
    ("garden gnome", "red", "plastic", "tiny", "garden", "decorating the lawn"),
    ("stapler", "black", "metal", "tiny", "office", "joining papers"),
    ("pencil", "red", "wood", "tiny", "office", "writing notes"),
    ("paper clip", "blue", "metal", "tiny", "office", "holding papers together"),
    ("desk", "white", "wood", "huge", "office", "working on"),
    ("office chair", "black", "cloth", "big", "office", "sitting at work"),
    ("filing cabinet", "black", "metal", "huge", "office", "storing files"),
]

THINGS: tuple[Thing, ...] = tuple(Thing(*row) for row in _THINGS)
SIZE_RANK = {size: rank for rank, size in enumerate(SIZES)}

PEOPLE: tuple[str, ...] = (
    "Anna", "Ben", "Clara", "David", "Emma", "Felix", "Grace", "Hugo", "Iris", "Jack",
    "Kate", "Leo", "Maya", "Noah", "Olivia", "Paul", "Rosa", "Sam", "Tina", "Victor",
)  # fmt: skip
DAYS: tuple[str, ...] = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
TIMES: tuple[str, ...] = tuple(
    f"{h} {'am' if h in (9, 10, 11) else 'pm'}" for h in (9, 10, 11, 1, 2, 3, 4, 5, 6, 7)
)

# (verb phrase, venue): "play football" at "the park"
ACTIVITIES: tuple[tuple[str, str], ...] = (
    ("play football", "the park"),
    ("watch a film", "the cinema"),
    ("have lunch", "the cafe"),
    ("go swimming", "the pool"),
    ("study for the test", "the library"),
    ("bake a cake", "the kitchen"),
    ("buy fruit", "the market"),
    ("play tennis", "the sports club"),
    ("walk the dog", "the beach"),
    ("paint a picture", "the art room"),
)

# countable goods for word problems: (singular, plural)
GOODS: tuple[tuple[str, str], ...] = (
    ("apple", "apples"), ("pencil", "pencils"), ("marble", "marbles"), ("sticker", "stickers"),
    ("cookie", "cookies"), ("book", "books"), ("card", "cards"), ("egg", "eggs"),
    ("flower", "flowers"), ("stamp", "stamps"), ("shell", "shells"), ("coin", "coins"),
    ("orange", "oranges"), ("balloon", "balloons"), ("candy", "candies"), ("toy car", "toy cars"),
)  # fmt: skip
# containers for "each box holds N goods"
CONTAINERS: tuple[tuple[str, str], ...] = (
    ("box", "boxes"), ("bag", "bags"), ("basket", "baskets"), ("jar", "jars"), ("pack", "packs"), ("tray", "trays"),
)  # fmt: skip


def article(noun: str) -> str:
    """'a' or 'an' for `noun`."""
    return "an" if noun[0] in "aeiou" else "a"


def place_phrase(place: str) -> str:
    """Where a thing is found, as a phrase: 'in the kitchen', 'at the beach'."""
    return f"at the {place}" if place == "beach" else f"in the {place}"


def pick_people(rng: random.Random, count: int = 2) -> list[str]:
    """`count` different names."""
    return rng.sample(PEOPLE, count)
