"""The general-purpose pretraining corpus of the embedded tiny base model, generated from a seed.

    from zflora.harness.data.corpus import general_corpus
    docs = general_corpus(seed=0, n_docs=6000)

Short documents of five kinds, each with several templates: facts about the objects of
`world.THINGS` (colour, material, size, place, use, size comparisons, little stories),
arithmetic statements and small number stories (covering every step the math problems
need), two-person small-talk dialogues, third-person accounts of plans, and everyday
sentences with letters as words ("flat B") and questions that get answers. They teach
the base model the world and the language the embedded tasks use, but never a task's
format: no "Question:", lettered option lists, "Answer:", "The answer is", "Dialogue:" or
"Summary:" appear, and no task prompt does (tested).
"""

from __future__ import annotations

import random

from zflora.harness.data import world
from zflora.harness.data.world import Thing


def _a(thing: Thing) -> str:
    return f"{world.article(thing.name)} {thing.name}"


def _fact(rng: random.Random, thing: Thing) -> str:
    """One sentence stating one property of `thing`."""
    the, a = thing.name, _a(thing)
    where = world.place_phrase(thing.place)
    choices = [
        f"The {the} is {thing.colour}.",
        f"The colour of the {the} is {thing.colour}.",
        f"{a.capitalize()} is often {thing.colour}.",
        f"The {the} is made of {thing.material}.",
        f"{a.capitalize()} is made from {thing.material}.",
        f"{a.capitalize()} is {thing.size}.",
        f"The {the} is a {thing.size} thing.",
        f"In size, {a} is {thing.size}.",
        f"You can find {a} {where}.",
        f"People keep the {the} {where}.",
        f"{a.capitalize()} is used for {thing.use}.",
        f"People use {a} for {thing.use}.",
        f"The {thing.colour} {the} is {where}.",
        f"A {thing.size} {thing.material} {the} is good for {thing.use}.",
    ]
    return rng.choice(choices)


def _world_doc(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:  # a few facts about one thing
        thing = rng.choice(world.THINGS)
        return " ".join(dict.fromkeys(_fact(rng, thing) for _ in range(rng.randint(2, 4))))
    if kind == 1:  # facts about several things
        return " ".join(_fact(rng, thing) for thing in rng.sample(world.THINGS, rng.randint(2, 4)))
    if kind == 2:  # size comparisons
        sentences = []
        for _ in range(rng.randint(1, 3)):
            x, y = rng.sample(world.THINGS, 2)
            if world.SIZE_RANK[x.size] == world.SIZE_RANK[y.size]:
                sentences.append(f"The {x.name} and the {y.name} are both {x.size}.")
            else:
                big, small = (x, y) if world.SIZE_RANK[x.size] > world.SIZE_RANK[y.size] else (y, x)
                sentences.append(rng.choice((f"The {big.name} is bigger than the {small.name}.",
                                             f"The {small.name} is smaller than the {big.name}.")))  # fmt: skip
        return " ".join(sentences)
    person, thing = rng.choice(world.PEOPLE), rng.choice(world.THINGS)  # a little story
    day = rng.choice(world.DAYS)
    return (
        f"On {day}, {person} took the {thing.colour} {thing.name} from the {thing.place}. "
        f"{person} needed it for {thing.use}. Later {person} put it back {world.place_phrase(thing.place)}."
    )


def _equation(rng: random.Random) -> str:
    """One arithmetic fact from the ranges the math problems use (and a little beyond)."""
    op = rng.choice("++--*")
    if op == "+":
        a, b = rng.randint(0, 25), rng.randint(0, 9)
        a, b = (a, b) if rng.random() < 0.6 else (b, a)
        return f"{a} + {b} = {a + b}."
    if op == "-":
        a = rng.randint(1, 25)
        b = rng.randint(0, min(a, 9))
        return f"{a} - {b} = {a - b}."
    a, b = rng.randint(1, 9), rng.randint(1, 9)
    return f"{a} * {b} = {a * b}."


def _arithmetic_doc(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:  # a list of equations
        return " ".join(_equation(rng) for _ in range(rng.randint(3, 6)))
    person = rng.choice(world.PEOPLE)
    _, many = rng.choice(world.GOODS)
    if kind == 1:  # a number story in the past tense
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        if rng.random() < 0.5:
            return f"{person} had {a} {many}. Later {person} got {b} more, so {person} had {a} + {b} = {a + b} {many}."
        a = a + b
        return (
            f"{person} had {a} {many} and used {b} of them. {a} - {b} = {a - b}, so {a - b} {many} were left."
        )
    box, boxes = rng.choice(world.CONTAINERS)
    a, b = rng.randint(2, 5), rng.randint(2, 5)
    return f"There were {a} {boxes} with {b} {many} in every {box}. That makes {a} * {b} = {a * b} {many}."


def _small_talk(rng: random.Random) -> str:
    a, b = world.pick_people(rng, 2)
    thing = rng.choice(world.THINGS)
    (activity, venue), day = rng.choice(world.ACTIVITIES), rng.choice(world.DAYS)
    lines = rng.choice(
        (
            [
                (a, f"Hello {b}, how are you?"),
                (b, "I am fine, thank you. And you?"),
                (a, "Very well, thanks."),
            ],
            [
                (a, f"Good morning, {b}!"),
                (b, f"Good morning, {a}. Nice weather today."),
                (a, "Yes, it is sunny."),
            ],
            [
                (a, f"What are you doing on {day}?"),
                (b, f"I think I will {activity} at {venue}."),
                (a, "That sounds fun."),
            ],
            [
                (a, f"Where is the {thing.name}?"),
                (b, f"It is {world.place_phrase(thing.place)}."),
                (a, "Thanks."),
            ],
            [
                (a, f"I like your {thing.colour} {thing.name}."),
                (b, f"Thank you! It is made of {thing.material}."),
            ],
            [(a, "I am hungry."), (b, "Let's have lunch at the cafe."), (a, "Good idea."), (b, "Let's go.")],
        )
    )
    return "\n".join(f"{who}: {line}" for who, line in lines)


def _account(rng: random.Random) -> str:
    """Third-person sentences about plans and events (the register of a summary)."""
    a, b = world.pick_people(rng, 2)
    (activity, venue), day, time = (
        rng.choice(world.ACTIVITIES),
        rng.choice(world.DAYS),
        rng.choice(world.TIMES),
    )
    thing = rng.choice(world.THINGS)
    return rng.choice(
        (
            f"{a} and {b} want to {activity} at {venue} on {day}. They will meet at {time}.",
            f"Last {day}, {a} went to {venue} with {b}. They had a good time.",
            f"{a} asked {b} for help. {b} gave {a} the {thing.name} for {thing.use}.",
            f"{b} found the {thing.colour} {thing.name} {world.place_phrase(thing.place)} and gave it to {a}.",
            f"{a} is busy on {day}, so {a} and {b} will meet another day.",
            f"{a} went shopping on {day} and bought some things for {b}.",
        )
    )


def _letters_and_questions(rng: random.Random) -> str:
    """Letters as words and questions with answers, in everyday sentences (never a quiz).

    Without these a byte-level tokenizer trained on the rest never makes " B" or "answer"
    tokens, and the model never learns to write them.
    """
    a, b = world.pick_people(rng, 2)
    first, second = rng.sample("ABCD", 2)
    thing, day = rng.choice(world.THINGS), rng.choice(world.DAYS)
    return rng.choice(
        (
            f"{a} lives in flat {first} and {b} lives in flat {second}.",
            f"The bus to the park leaves from gate {first} on {day}.",
            f"{a} sat in row {first} at the cinema, and {b} sat in row {second}.",
            f"{a} put the {thing.name} in box {first}. {b} looked in box {second} first.",
            f"The letters A, B, C and D come first. {a} wrote the letter {first} and {b} wrote {second}.",
            f"{a} asked {b} a question about the {thing.name}, and {b} knew the answer.",
            f"{b} did not know the answer, so {b} asked {a}. The answer was in the book.",
            f"Plan {first} was to {rng.choice(world.ACTIVITIES)[0]}; plan {second} was to stay home.",
        )
    )


def general_corpus(seed: int, n_docs: int) -> list[str]:
    """`n_docs` short documents (world facts, arithmetic, dialogues, accounts), deterministic in `seed`."""
    rng = random.Random(f"general-corpus:{seed}")
    makers = (_world_doc, _world_doc, _world_doc, _arithmetic_doc, _arithmetic_doc, _small_talk, _account,
              _letters_and_questions)  # fmt: skip
    return [rng.choice(makers)(rng) for _ in range(n_docs)]
