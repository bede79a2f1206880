"""The embedded task suite: three small tasks generated offline from a seed, one per category.

    from zflora.harness.data import load_examples
    train = load_examples("embedded-math", "train", n=2000, seed=0)
    test = load_examples("embedded-math", "test")          # 150 problems, none seen in train

- embedded-commonsense: multiple-choice questions about the objects of `world.THINGS`
  (colour, material, size, place); the property's four values listed as "A. ..."; the
  target states the fact, then the letter; answer = the letter, balanced (see `commonsense`).
- embedded-math: GSM8K-like word problems with 1-2 steps and one-digit operands; the
  target is a worked solution ending in "The answer is N."
- embedded-summary: two-person dialogues of 3-5 turns; the reference is one sentence
  built from the dialogue's facts.

Splits are disjoint by construction: every prompt is assigned to train, validation or test
by a hash of its text (10% test, 10% validation, 80% train), so no test prompt can appear
in train whatever the seeds and sizes. The seed and size choose which prompts are drawn.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable

from zflora.errors import ZFLoRAError
from zflora.harness.data import world
from zflora.harness.data.world import Thing

LETTERS = "ABCDE"
SPLITS = ("train", "validation", "test")
# per task and split; the commonsense question space is small (about 1900 prompts, 10% test)
DEFAULT_SIZES = {
    "embedded-commonsense": {"train": 2000, "validation": 100, "test": 100},
    "embedded-math": {"train": 2000, "validation": 150, "test": 150},
    "embedded-summary": {"train": 2000, "validation": 150, "test": 150},
}


def split_of(prompt: str) -> str:
    """The split a prompt belongs to, from a stable hash of its text."""
    bucket = int.from_bytes(hashlib.blake2b(prompt.encode("utf-8"), digest_size=8).digest(), "big") % 20
    return "test" if bucket < 2 else "validation" if bucket < 4 else "train"


def mc_prompt(question: str, options: list[str]) -> str:
    """The multiple-choice prompt shared by the commonsense tasks: options as 'A. ...'."""
    lines = [f"Question: {question}"] + [f"{LETTERS[i]}. {option}" for i, option in enumerate(options)]
    return "\n".join(lines) + "\nAnswer:"


# ----------------------------------------------------------------------------- commonsense


# question templates per property; {the}: "mug", {a}: "a mug"
_TEMPLATES = {
    "colour": ("What colour is the {the}?", "What colour is {a} usually?", "Which colour does the {the} have?",
               "The {the} is usually which colour?", "What is the colour of the {the}?",
               "If you look at {a}, what colour do you see?", "Tell me the colour of the {the}.",
               "In which colour is the {the}?", "What colour would {a} be?", "Name the colour of {a}.", "What colour has the {the} got?",
               "Do you know the colour of the {the}?", "Say which colour the {the} is.", "What colour are most {the}s?",
               "Which colour fits the {the}?", "Guess the colour of {a}."),
    "material": ("What is the {the} made of?", "Which material is {a} made of?", "What material is used to make {a}?",
                 "The {the} is made of which material?", "What is {a} usually made from?",
                 "Which material would you find in {a}?", "From what is the {the} made?",
                 "Tell me what the {the} is made of.", "What is the material of the {the}?",
                 "Name the material of {a}.", "What stuff is the {the} made of?",
                 "Do you know what {a} is made of?", "Say which material the {the} is.", "What are most {the}s made of?",
                 "Which material fits the {the}?", "Guess the material of {a}."),
    "size": ("How big is {a}?", "What size is the {the}?", "How large is the {the}?", "Which size fits {a} best?",
             "Is {a} tiny, small, big or huge?", "What is the size of the {the}?", "How big is the {the} usually?",
             "Tell me the size of the {the}.", "Which size is {a}?", "Name the size of {a}.",
             "How big has the {the} got to be?", "Do you know the size of the {the}?", "Say which size the {the} is.",
             "How big are most {the}s?", "Which size fits the {the}?", "Guess the size of {a}."),
    "place": ("Where would you usually find {a}?", "Where is the {the} usually kept?",
              "In which room is the {the} usually found?", "Where does the {the} usually belong?",
              "Where do people keep {a}?", "If you need {a}, where do you look?", "Which place has the {the}?",
              "Tell me where the {the} is.", "Where is {a} found?", "Name the place of the {the}.",
              "In which room do you keep {a}?", "Do you know where the {the} is?", "Say which room has the {the}.",
              "Where are most {the}s kept?", "Which room fits the {the}?", "Guess where {a} is kept."),
}  # fmt: skip
# each property's four values, always listed in this order (world.py)
_OPTIONS = {"colour": world.COLOURS, "material": world.MATERIALS, "size": world.SIZES, "place": world.PLACES}


def _commonsense_item(rng: random.Random) -> tuple[str, Thing, str]:
    """One question about one thing: (question, the thing, the property asked)."""
    thing: Thing = rng.choice(world.THINGS)
    kind = rng.choice(tuple(_TEMPLATES))
    question = rng.choice(_TEMPLATES[kind]).format(
        the=thing.name, a=f"{world.article(thing.name)} {thing.name}"
    )
    return question, thing, kind


def fact_sentence(thing: Thing, kind: str) -> str:
    """The fact a commonsense answer states first, phrased as the general corpus states it."""
    a = f"{world.article(thing.name)} {thing.name}"
    return {
        "colour": f"The colour of the {thing.name} is {thing.colour}.",
        "material": f"The {thing.name} is made of {thing.material}.",
        "size": f"In size, {a} is {thing.size}.",
        "place": f"You can find {a} {world.place_phrase(thing.place)}.",
    }[kind]


def commonsense(split: str, n: int, seed: int) -> list[tuple[str, str, str]]:
    """`n` multiple-choice questions of `split`; the right letter cycles A, B, C, D (balanced).

    A question asks one property (colour, material, size, place) of one of the 24 objects
    of the built-in world; the options are always that property's four values in the
    same order. A ~1M-parameter model cannot learn to point at the letter of a value in a
    freshly shuffled list in a CPU-minutes budget ("symbol binding" comes with far more
    scale and training), so the fixed order makes the letter follow from the value and
    the question tests what it should: knowing the fact. The target first states the fact
    the way the base model's corpus does, then the letter (" The colour of the spoon is
    white. The answer is A."), a short rationale in the spirit of the chain-of-thought
    targets of the math task. Train and test share the facts but never a prompt: a test
    question is a new phrasing of a fact seen in training.
    """
    rng = random.Random(f"embedded-commonsense:{split}:{seed}")

    def make(index: int) -> tuple[str, str, str] | None:
        question, thing, kind = _commonsense_item(rng)
        options = _OPTIONS[kind]
        position = options.index(getattr(thing, kind))
        if position != index % 4:  # draw until the letter is the next one in turn: balanced
            return None
        letter = LETTERS[position]
        return (
            mc_prompt(question, list(options)),
            f" {fact_sentence(thing, kind)} The answer is {letter}.",
            letter,
        )

    return _collect(make, split, n, "embedded-commonsense")


# ----------------------------------------------------------------------------- math


def _math_item(rng: random.Random) -> tuple[str, list[str], int]:
    """One word problem: (problem text, worked steps, answer).

    One or two steps with one-digit operands (sums up to 18, products up to 25): every
    step is an arithmetic fact the tiny base model read many times in its corpus, so
    what the task teaches is reading the problem into the right equations.
    """
    name = rng.choice(world.PEOPLE)
    friend = rng.choice([p for p in world.PEOPLE if p != name])
    _, many = rng.choice(world.GOODS)
    box, boxes = rng.choice(world.CONTAINERS)
    form = rng.randrange(6)
    if form == 0:  # a + b
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        text = f"{name} has {a} {many}. {friend} gives {name} {b} more {many}. How many {many} does {name} have now?"
        return text, [f"{a} + {b} = {a + b}."], a + b
    if form == 1:  # a - b
        a = rng.randint(3, 18)
        b = rng.randint(1, min(9, a - 1))
        text = f"{name} has {a} {many}. {name} gives {b} {many} to {friend}. How many {many} does {name} have left?"
        return text, [f"{a} - {b} = {a - b}."], a - b
    if form == 2:  # a * b
        a, b = rng.randint(2, 5), rng.randint(2, 5)
        text = (
            f"{name} has {a} {boxes}. Each {box} holds {b} {many}. How many {many} does {name} have in total?"
        )
        return text, [f"{a} * {b} = {a * b}."], a * b
    if form == 3:  # a + b - c
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        c = rng.randint(1, min(9, a + b - 1))
        text = (
            f"{name} has {a} {many}. {name} buys {b} more and then gives {c} to {friend}. "
            f"How many {many} does {name} have now?"
        )
        return text, [f"{a} + {b} = {a + b}.", f"{a + b} - {c} = {a + b - c}."], a + b - c
    if form == 4:  # a - b + c
        a = rng.randint(3, 9)
        b, c = rng.randint(1, a - 1), rng.randint(1, 9)
        text = (
            f"{name} had {a} {many} and lost {b}. Then {friend} gave {name} {c} {many}. "
            f"How many {many} does {name} have now?"
        )
        return text, [f"{a} - {b} = {a - b}.", f"{a - b} + {c} = {a - b + c}."], a - b + c
    # form 5: a * b + c
    a, b, c = rng.randint(2, 4), rng.randint(2, 4), rng.randint(1, 9)
    text = (
        f"{name} buys {a} {boxes} with {b} {many} in each {box} and finds {c} more {many}. "
        f"How many {many} does {name} have?"
    )
    return text, [f"{a} * {b} = {a * b}.", f"{a * b} + {c} = {a * b + c}."], a * b + c


def arithmetic(split: str, n: int, seed: int) -> list[tuple[str, str, str]]:
    """`n` word problems of `split` with worked solutions."""
    rng = random.Random(f"embedded-math:{split}:{seed}")

    def make(index: int) -> tuple[str, str, str] | None:
        text, steps, answer = _math_item(rng)
        prompt = f"Question: {text}\nAnswer:"
        target = " " + " ".join(steps) + f" The answer is {answer}."
        return prompt, target, str(answer)

    return _collect(make, split, n, "embedded-math")


# ----------------------------------------------------------------------------- summary


def _dialogue_item(rng: random.Random) -> tuple[list[tuple[str, str]], str]:
    """One dialogue as [(speaker, line)] and its reference summary."""
    a, b = world.pick_people(rng, 2)
    form = rng.randrange(5)
    turns: list[tuple[str, str]] = []
    if form == 0:  # plan an activity
        (activity, venue), day, time = (
            rng.choice(world.ACTIVITIES),
            rng.choice(world.DAYS),
            rng.choice(world.TIMES),
        )
        thing = rng.choice(world.THINGS)
        turns += [
            (a, f"Do you want to {activity} on {day}?"),
            (b, rng.choice(("Sure! Where and when?", "Yes, good idea. Where?", "Why not. What time?"))),
            (a, f"At {venue}, at {time}."),
        ]
        summary = f"{a} and {b} will {activity} at {venue} on {day} at {time}."
        if rng.random() < 0.5:
            turns.append((b, f"Great, I will bring my {thing.colour} {thing.name}."))
            summary = (
                f"{a} and {b} will {activity} at {venue} on {day} at {time}, "
                f"and {b} will bring {world.article(thing.name)} {thing.name}."
            )
    elif form == 1:  # a lost object
        thing = rng.choice(world.THINGS)
        turns += [
            (a, f"I can't find my {thing.colour} {thing.name}. Have you seen it?"),
            (b, f"Yes, I saw it {world.place_phrase(thing.place)} this morning."),
            (a, rng.choice(("Thank you so much!", "Oh good, thanks.", "Great, I will look there."))),
        ]
        lost = f"{world.article(thing.colour)} {thing.colour} {thing.name}"
        summary = f"{a} lost {lost}, and {b} saw it {world.place_phrase(thing.place)}."
    elif form == 2:  # borrow an object
        thing, day = rng.choice(world.THINGS), rng.choice(world.DAYS)
        turns += [
            (a, f"Can I borrow your {thing.name}? I need it for {thing.use}."),
            (b, f"Of course. I can bring it on {day}."),
            (a, rng.choice(("Perfect, thanks!", "That works for me.", "Thanks a lot."))),
        ]
        summary = f"{b} will lend {a} {world.article(thing.name)} {thing.name} on {day} for {thing.use}."
    elif form == 3:  # move a meeting
        (activity, _), first, second = rng.choice(world.ACTIVITIES), *rng.sample(world.DAYS, 2)
        turns += [
            (a, f"Sorry, I can't {activity} with you on {first}."),
            (b, "No problem. When are you free?"),
            (a, f"I am free on {second}."),
            (b, f"OK, let's {activity} on {second} then."),
        ]
        summary = f"{a} and {b} will {activity} on {second} instead of {first}."
    else:  # shopping errand
        _, many = rng.choice(world.GOODS)
        count, day = rng.randint(2, 12), rng.choice(world.DAYS)
        turns += [
            (a, f"Are you going to the shop on {day}?"),
            (b, "Yes, do you need anything?"),
            (a, f"Could you buy {count} {many} for me?"),
            (b, rng.choice(("Sure, no problem.", "Yes, I will.", "OK, I will get them."))),
        ]
        summary = f"{b} will buy {count} {many} for {a} at the shop on {day}."
    if rng.random() < 0.5:  # a greeting opens the first line
        greeting = rng.choice((f"Hi {b}!", f"Hello {b}.", f"Hey {b}!"))
        turns[0] = (a, f"{greeting} {turns[0][1]}")
    if len(turns) < 5 and rng.random() < 0.5:  # a closing line that adds no fact
        last = turns[-1][0]
        turns.append(
            (b if last == a else a, rng.choice(("See you!", "Bye!", "Talk soon.", "Have a nice day!")))
        )
    return turns, summary


def summary(split: str, n: int, seed: int) -> list[tuple[str, str, str]]:
    """`n` dialogues of `split` with one-sentence reference summaries."""
    rng = random.Random(f"embedded-summary:{split}:{seed}")

    def make(index: int) -> tuple[str, str, str] | None:
        turns, reference = _dialogue_item(rng)
        prompt = "Dialogue:\n" + "\n".join(f"{who}: {line}" for who, line in turns) + "\nSummary:"
        return prompt, f" {reference}", reference

    return _collect(make, split, n, "embedded-summary")


# ----------------------------------------------------------------------------- shared


def _collect(
    make: Callable[[int], tuple[str, str, str] | None], split: str, n: int, task: str
) -> list[tuple[str, str, str]]:
    """Draw items until `n` prompts of `split` are collected (others are discarded).

    Validation and test prompts are distinct; train may repeat a prompt (as epochs would)
    once the task's prompts of the train split run short.
    """
    items: list[tuple[str, str, str]] = []
    seen: set[str] = set()
    attempts, budget = 0, 400 * n + 1000
    while len(items) < n:
        attempts += 1
        if attempts > budget:
            raise ZFLoRAError(
                f"{task}: could only draw {len(items)} distinct {split} examples, not {n}; "
                f"the task has about that many, ask for at most {len(items)}"
            )
        item = make(len(items))
        if item is None or split_of(item[0]) != split:
            continue
        if item[0] in seen and (split != "train" or attempts < 50 * n):
            continue
        seen.add(item[0])
        items.append(item)
    return items


GENERATORS: dict[str, Callable[..., list[tuple[str, str, str]]]] = {
    "embedded-commonsense": commonsense,
    "embedded-math": arithmetic,
    "embedded-summary": summary,
}
