"""The small built-in world that the embedded tasks and the tiny base model's corpus share.

Fixed facts (objects and their colour, material, size, place and use; people; days;
activities), not random ones: the tiny base model reads these facts in its pretraining
corpus (`zflora.tinybase.general_corpus`) and the embedded tasks ask about them in a
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


# name, colour, material, size, place, use. Every use is unique, so "which object is used
# for X?" has one right answer; the other properties repeat across objects.
_THINGS = [
    ("spoon", "silver", "metal", "small", "kitchen", "stirring soup"),
    ("mug", "white", "clay", "small", "kitchen", "drinking tea"),
    ("kettle", "black", "metal", "small", "kitchen", "boiling water"),
    ("plate", "yellow", "clay", "small", "kitchen", "serving food"),
    ("knife", "grey", "metal", "small", "kitchen", "cutting bread"),
    ("fridge", "white", "metal", "huge", "kitchen", "keeping food cold"),
    ("salad bowl", "green", "wood", "small", "kitchen", "mixing salad"),
    ("teapot", "blue", "clay", "small", "kitchen", "pouring tea"),
    ("frying pan", "black", "metal", "small", "kitchen", "frying eggs"),
    ("cutting board", "brown", "wood", "small", "kitchen", "chopping vegetables"),
    ("shovel", "red", "metal", "big", "garden", "digging holes"),
    ("hose", "green", "rubber", "big", "garden", "watering plants"),
    ("bench", "brown", "wood", "big", "garden", "sitting outside"),
    ("bucket", "orange", "plastic", "small", "garden", "carrying water"),
    ("flower pot", "orange", "clay", "small", "garden", "growing flowers"),
    ("towel", "blue", "cloth", "small", "bathroom", "drying your hands"),
    ("mirror", "silver", "glass", "big", "bathroom", "seeing your face"),
    ("toothbrush", "pink", "plastic", "tiny", "bathroom", "cleaning teeth"),
    ("bathtub", "white", "stone", "huge", "bathroom", "taking a bath"),
    ("pillow", "white", "cloth", "small", "bedroom", "resting your head"),
    ("blanket", "purple", "wool", "big", "bedroom", "keeping warm at night"),
    ("lamp", "gold", "metal", "small", "bedroom", "lighting the room"),
    ("wardrobe", "brown", "wood", "huge", "bedroom", "storing clothes"),
    ("alarm clock", "red", "plastic", "small", "bedroom", "waking up on time"),
    ("stapler", "black", "metal", "small", "office", "joining papers"),
    ("pencil", "yellow", "wood", "tiny", "office", "writing notes"),
    ("paper clip", "silver", "metal", "tiny", "office", "holding papers together"),
    ("desk", "grey", "wood", "huge", "office", "working on"),
    ("envelope", "white", "paper", "small", "office", "sending letters"),
    ("ruler", "blue", "plastic", "small", "office", "measuring lines"),
    ("hammer", "grey", "metal", "small", "garage", "hitting nails"),
    ("ladder", "silver", "metal", "huge", "garage", "reaching high shelves"),
    ("bicycle", "red", "metal", "big", "garage", "riding to school"),
    ("toolbox", "blue", "metal", "big", "garage", "keeping tools"),
    ("rope", "brown", "cloth", "big", "garage", "tying boxes"),
    ("chalk", "white", "stone", "tiny", "classroom", "writing on the board"),
    ("globe", "blue", "plastic", "big", "classroom", "finding countries"),
    ("eraser", "pink", "rubber", "tiny", "classroom", "removing pencil marks"),
    ("backpack", "green", "leather", "big", "classroom", "carrying books"),
    ("swim ring", "orange", "rubber", "big", "beach", "floating in the sea"),
    ("kite", "red", "paper", "big", "beach", "flying in the wind"),
    ("beach ball", "yellow", "rubber", "big", "beach", "playing catch"),
    ("sun hat", "purple", "cloth", "small", "beach", "shading your face"),
    ("book", "brown", "paper", "small", "library", "reading stories"),
    ("bookshelf", "brown", "wood", "huge", "library", "holding books"),
    ("map", "yellow", "paper", "small", "library", "finding the way"),
    ("sofa", "grey", "leather", "huge", "living room", "relaxing after work"),
    ("remote control", "black", "plastic", "tiny", "living room", "changing channels"),
    ("vase", "blue", "glass", "small", "living room", "holding flowers"),
    ("rug", "red", "wool", "big", "living room", "covering the floor"),
    ("candle", "white", "wax", "small", "living room", "giving soft light"),
    ("window", "clear", "glass", "big", "living room", "letting light in"),
]

THINGS: tuple[Thing, ...] = tuple(Thing(*row) for row in _THINGS)
COLOURS: tuple[str, ...] = tuple(sorted({t.colour for t in THINGS}))
MATERIALS: tuple[str, ...] = tuple(sorted({t.material for t in THINGS}))
SIZES: tuple[str, ...] = ("tiny", "small", "big", "huge")
PLACES: tuple[str, ...] = tuple(sorted({t.place for t in THINGS}))
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
