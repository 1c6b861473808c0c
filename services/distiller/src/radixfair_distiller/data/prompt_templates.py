"""A large chat prompt set, written for this project as templates x subjects x answer styles x audiences.

The hand-written set (prompts/chat_prompts.jsonl, 215 prompts) is far too small to give the teacher
tens of millions of tokens to write. This module combines task templates with subjects of the
matching kind and an answer style, and adds arithmetic word problems whose numbers come from the
seed, so the set holds tens of thousands of distinct prompts. ``generated_prompts(count, seed)`` is
a pure function: the same arguments give the same prompts, in the same order, on every machine.

Splits. A prompt's split is decided by its *subject* (or, for a word problem, its numbers), never
by its wording: every prompt about "the water cycle" lands in the same split, so no student is
evaluated on a subject it was trained on in other words. ``avoid`` drops the prompts whose subject
occurs in given texts (the hand-written evaluation prompts, say), so the two sets cannot leak into
each other either.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import random
from collections.abc import Iterable
from dataclasses import dataclass

# Subjects by kind. Each kind has its own templates below; a subject is written so that it reads
# well in every template of its kind.
SUBJECTS: dict[str, tuple[str, ...]] = {
    "concept": (
        "photosynthesis",
        "the water cycle",
        "gravity",
        "inflation",
        "compound interest",
        "evolution",
        "plate tectonics",
        "the immune system",
        "supply and demand",
        "climate change",
        "vaccination",
        "electricity",
        "magnetism",
        "friction",
        "erosion",
        "the greenhouse effect",
        "democracy",
        "recycling",
        "nutrition",
        "sleep",
        "memory",
        "habit formation",
        "time zones",
        "the tides",
        "rainbows",
        "echoes",
        "fermentation",
        "composting",
        "solar power",
        "wind power",
        "nuclear fission",
        "black holes",
        "the speed of light",
        "DNA",
        "antibiotics",
        "metabolism",
        "biodiversity",
        "ocean currents",
        "volcanoes",
        "earthquakes",
        "the moon's phases",
        "eclipses",
        "seasons",
        "cloud formation",
        "lightning",
        "the carbon cycle",
        "pollination",
        "migration of birds",
        "hibernation",
        "camouflage in animals",
        "the food chain",
        "the scientific method",
        "statistics",
        "probability",
        "prime numbers",
        "fractions",
        "percentages",
        "the Pythagorean theorem",
        "algorithms",
        "encryption",
        "the internet",
        "email",
        "search engines",
        "machine learning",
        "databases",
        "operating systems",
        "computer memory",
        "version control",
        "open source software",
        "budgeting",
        "saving money",
        "taxes",
        "insurance",
        "credit scores",
        "trade between countries",
        "the stock market",
        "banks",
        "money",
        "minimum wage",
        "teamwork",
        "leadership",
        "negotiation",
        "public speaking",
        "critical thinking",
        "active listening",
        "time management",
        "procrastination",
        "stress",
        "exercise",
        "hydration",
        "first aid",
        "handwashing",
        "literacy",
        "libraries",
        "museums",
        "the printing press",
        "the steam engine",
        "the telephone",
        "maps",
        "compasses",
        "calendars",
        "clocks",
        "bridges",
        "skyscrapers",
        "tunnels",
        "dams",
        "canals",
        "railways",
        "airplanes",
        "submarines",
        "satellites",
        "GPS",
        "refrigeration",
        "microwaves",
        "batteries",
        "light bulbs",
        "sound waves",
        "musical scales",
        "rhythm",
        "perspective in drawing",
        "color mixing",
        "poetry",
        "metaphors",
        "storytelling",
        "journalism",
        "advertising",
    ),
    "thing": (
        "a bicycle",
        "a library card",
        "a houseplant",
        "a rain jacket",
        "a kitchen knife",
        "a backpack",
        "a bookshelf",
        "a garden",
        "a thermos",
        "a notebook",
        "a pair of running shoes",
        "a tent",
        "a telescope",
        "a microscope",
        "a sewing machine",
        "a toolbox",
        "a map",
        "a calendar",
        "a piano",
        "a guitar",
        "a chess set",
        "a bird feeder",
        "a fish tank",
        "a compost bin",
        "a smoke alarm",
        "a fire extinguisher",
        "a first-aid kit",
        "a flashlight",
        "a rain barrel",
        "a solar lamp",
        "an umbrella",
        "a winter coat",
        "a lunch box",
        "a water filter",
        "a kitchen scale",
        "a wheelbarrow",
        "a ladder",
        "a hammock",
        "a sleeping bag",
        "a kite",
    ),
    "activity": (
        "learning a new language",
        "starting a vegetable garden",
        "training for a 5 km run",
        "baking bread",
        "planning a trip",
        "moving to a new city",
        "studying for an exam",
        "learning to cook",
        "writing a cover letter",
        "preparing for a job interview",
        "organizing a small event",
        "keeping a journal",
        "learning to swim",
        "camping for the first time",
        "reading more books",
        "learning to draw",
        "teaching a child to ride a bike",
        "adopting a dog",
        "caring for a cat",
        "reducing food waste",
        "saving for a holiday",
        "learning to program",
        "giving a presentation",
        "running a meeting",
        "volunteering",
        "making new friends",
        "decluttering a room",
        "painting a room",
        "fixing a flat tire",
        "planting a tree",
        "hosting a dinner",
        "learning to play chess",
        "improving handwriting",
        "starting to meditate",
        "commuting by bike",
        "working from home",
        "learning to type faster",
        "writing a short story",
        "taking better photos",
        "learning to knit",
    ),
    "pair": (
        "cats and dogs",
        "trains and planes",
        "books and films",
        "tea and coffee",
        "summer and winter",
        "cities and villages",
        "renting and buying a home",
        "walking and cycling",
        "paper and screens",
        "oceans and lakes",
        "rivers and canals",
        "deserts and forests",
        "weather and climate",
        "viruses and bacteria",
        "speed and velocity",
        "mass and weight",
        "revenue and profit",
        "saving and investing",
        "a list and a set in Python",
        "RAM and disk storage",
        "a haiku and a limerick",
        "fiction and non-fiction",
        "a map and a globe",
        "solar and wind power",
        "frogs and toads",
        "alligators and crocodiles",
        "moths and butterflies",
        "stars and planets",
        "meteors and comets",
        "weather forecasts and climate models",
    ),
    "code_task": (
        "reverses a string",
        "checks whether a number is prime",
        "counts the vowels in a sentence",
        "returns the largest number in a list",
        "removes duplicates from a list while keeping order",
        "computes the factorial of n",
        "converts Celsius to Fahrenheit",
        "checks whether a word is a palindrome",
        "merges two sorted lists",
        "counts how often each word appears in a text",
        "returns the n-th Fibonacci number",
        "flattens a list of lists",
        "finds the average of a list",
        "capitalizes the first letter of every word",
        "checks whether a year is a leap year",
        "sums the digits of an integer",
        "returns the second largest number in a list",
        "splits a list into chunks of size k",
        "checks whether two words are anagrams",
        "converts a number of seconds into hours, minutes and seconds",
    ),
    "story_seed": (
        "a lighthouse keeper who finds a message in a bottle",
        "a robot that learns to paint",
        "a lost dog finding its way home",
        "a child who can talk to trees",
        "a baker who runs out of flour",
        "two friends building a raft",
        "a snowman that does not want to melt",
        "a dragon afraid of the dark",
        "a librarian who discovers a hidden room",
        "a girl who collects sounds",
        "a train that never stops",
        "a cat who becomes mayor of a village",
        "an astronaut who misses rain",
        "a clock that runs backwards",
        "a fox and a crow who start a bakery",
        "a boy who plants a seed on the moon",
        "a musician who loses her voice",
        "a whale who sings to ships",
        "a town where it never snows",
        "a turtle who wants to fly",
    ),
}

TEMPLATES: dict[str, tuple[str, ...]] = {
    "concept": (
        "Explain {s} to a ten-year-old.",
        "What is {s}?",
        "Give two everyday examples of {s}.",
        "What is a common misconception about {s}?",
        "Why does {s} matter in daily life?",
        "Write a short paragraph about {s} for a school newsletter.",
        "Describe {s} in simple words.",
        "What are the main ideas behind {s}?",
        "How would you teach {s} to a beginner?",
        "Write three quiz questions about {s}, with answers.",
    ),
    "thing": (
        "How do you take care of {s}?",
        "What are three good uses of {s}?",
        "Write a short product description for {s}.",
        "What should someone check before buying {s}?",
        "Describe {s} to someone who has never seen one.",
        "What are the pros and cons of owning {s}?",
    ),
    "activity": (
        "Give me tips for {s}.",
        "What are the first three steps in {s}?",
        "What mistakes do beginners make when {s}?",
        "Write a short plan for {s} over one month.",
        "Why might someone enjoy {s}?",
        "What do I need before {s}?",
    ),
    "pair": (
        "Compare {s}.",
        "What are the main differences between {s}?",
        "Which is better for a beginner to learn about: {s}? Explain.",
        "Write a short table comparing {s}.",
    ),
    "code_task": (
        "Write a Python function that {s}.",
        "Write a Python function that {s}, and explain how it works.",
        "Write a Python function that {s}. Include a short docstring and one example.",
    ),
    "story_seed": (
        "Write a short story about {s}.",
        "Write a poem about {s}.",
        "Write the opening paragraph of a story about {s}.",
        "Summarize a possible plot for a children's book about {s}.",
    ),
}

# Appended to a templated prompt; the empty style leaves the prompt as it is.
STYLES: tuple[str, ...] = (
    "",
    " Keep it brief.",
    " Answer in one paragraph.",
    " Use a bulleted list.",
    " Start with a one-sentence summary.",
)

# Put before a templated prompt; the empty one leaves it as it is.
AUDIENCES: tuple[str, ...] = (
    "",
    "I am a beginner. ",
    "For a high-school student: ",
    "Please answer clearly. ",
)

# Arithmetic word problems: names, items and the number ranges drawn by the seed.
_NAMES = ("Ana", "Ben", "Chen", "Dina", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jo", "Kai", "Lena")
_ITEMS = ("apples", "stickers", "marbles", "books", "pencils", "cookies", "stamps", "shells")
_PROBLEMS = (
    "{n} has {a} {i} and buys {b} more. How many {i} does {n} have now?",
    "{n} had {a} {i} and gave {b} away. How many {i} are left?",
    "{n} packs {a} {i} into bags of {b}. How many full bags are there, and how many {i} are left over?",
    "Each box holds {b} {i}. {n} has {a} boxes. How many {i} is that in total?",
    "What is {a} times {b}? Show your working.",
    "What is {a} plus {b}, minus 7?",
)


@dataclass(frozen=True)
class TemplatedPrompt:
    """One generated prompt; ``group`` is the key its split is decided by (its subject or numbers)."""

    id: str
    prompt: str
    group: str


def all_templated_prompts() -> list[TemplatedPrompt]:
    """Every audience x template x subject x style combination, in a fixed order (no word problems)."""
    return list(_templated_pool())


# Built once per process: the pool is a constant of this module (immutable prompts in a tuple), and
# hashing its 40,000 texts costs half a second, which every generated_prompts call would pay again.
@functools.cache
def _templated_pool() -> tuple[TemplatedPrompt, ...]:
    out = []
    for kind, subjects in SUBJECTS.items():
        combinations = itertools.product(subjects, TEMPLATES[kind], STYLES, AUDIENCES)
        for subject, template, style, audience in combinations:
            text = audience + template.format(s=subject) + style
            out.append(TemplatedPrompt(_prompt_id(text), text, f"{kind}::{subject}"))
    return tuple(out)


def word_problems(count: int, seed: int) -> list[TemplatedPrompt]:
    """``count`` arithmetic word problems with numbers drawn from ``seed``; distinct texts."""
    rng = random.Random(f"word-problems:{seed}")
    out: dict[str, TemplatedPrompt] = {}
    while len(out) < count:
        a, b = rng.randrange(2, 100), rng.randrange(2, 13)
        template = rng.choice(_PROBLEMS)
        text = template.format(n=rng.choice(_NAMES), i=rng.choice(_ITEMS), a=a, b=b)
        # The numbers and the kind of problem decide the split, not the name or the item.
        out.setdefault(text, TemplatedPrompt(_prompt_id(text), text, f"problem::{template}::{a}::{b}"))
    return list(out.values())


def generated_prompts(
    count: int, seed: int, word_problem_share: float = 0.1, avoid: Iterable[str] = ()
) -> list[TemplatedPrompt]:
    """``count`` distinct prompts (fewer if the set runs out), shuffled by ``seed``.

    About ``word_problem_share`` of them are word problems. A prompt whose subject occurs
    (case-insensitively) in one of the ``avoid`` texts is left out.
    """
    avoided = [text.lower() for text in avoid]
    pool = _templated_pool()
    # Decided once per subject (a few hundred), not once per prompt (tens of thousands).
    mentioned = {group for group in {p.group for p in pool} if _mentioned(group, avoided)}
    templated = [p for p in pool if p.group not in mentioned]
    rng = random.Random(f"generated-prompts:{seed}")
    rng.shuffle(templated)
    problems = word_problems(round(count * word_problem_share), seed)
    chosen = templated[: count - len(problems)] + problems
    rng.shuffle(chosen)
    return chosen


def _mentioned(group: str, avoided: list[str]) -> bool:
    kind, _, subject = group.partition("::")
    if kind == "problem":
        return False
    # "the water cycle" is mentioned by "Describe the water cycle." and by "water cycle".
    core = subject.lower().removeprefix("the ").removeprefix("a ").removeprefix("an ")
    return any(core in text for text in avoided)


def _prompt_id(text: str) -> str:
    return "g-" + hashlib.sha256(text.encode()).hexdigest()[:16]
