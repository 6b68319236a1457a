"""The deterministic English corpus the tiny checkpoints are trained on (chats and short prose).

Templated questions and answers about capitals, animals, arithmetic, code, planets, stories and
advice, rendered with the Llama-3 chat format; the same documents for every weight seed.
"""
from __future__ import annotations

import random
from typing import Iterator, Sequence

BOS, EOT_TEXT, EOT = "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"
CORPUS_SEED = 20240601  # the corpus (hence the tokenizer) is the same for every --seed

COUNTRIES = (("France", "Paris", "French"), ("Spain", "Madrid", "Spanish"),
             ("Italy", "Rome", "Italian"), ("Germany", "Berlin", "German"),
             ("Japan", "Tokyo", "Japanese"), ("Egypt", "Cairo", "Arabic"),
             ("Canada", "Ottawa", "English"),
             ("Brazil", "Brasilia", "Portuguese"), ("Kenya", "Nairobi", "Swahili"),
             ("Peru", "Lima", "Spanish"), ("Norway", "Oslo", "Norwegian"),
             ("Greece", "Athens", "Greek"), ("China", "Beijing", "Chinese"),
             ("Mexico", "Mexico City", "Spanish"), ("Poland", "Warsaw", "Polish"))
ANIMALS = (("cat", "house", "fish", "purrs"), ("dog", "yard", "meat", "barks"),
           ("cow", "farm", "grass", "moos"), ("owl", "forest", "mice", "hoots"),
           ("duck", "pond", "seeds", "quacks"), ("lion", "savanna", "zebras", "roars"),
           ("horse", "stable", "hay", "neighs"), ("bee", "garden", "nectar", "buzzes"),
           ("frog", "swamp", "insects", "croaks"), ("wolf", "mountains", "deer", "howls"),
           ("rabbit", "meadow", "carrots", "thumps"), ("whale", "ocean", "krill", "sings"))
PLANETS = ("Mercury", "Venus", "Earth", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune")
NAMES = ("Alice", "Bob", "Carol", "David", "Emma", "Frank", "Grace", "Henry", "Ivy", "Jack", "Kate",
         "Leo", "Mia", "Noah", "Olivia", "Paul", "Sara", "Tom")
PLACES = ("market", "library", "park", "school", "museum", "station", "beach", "bakery", "office",
          "garden", "hospital", "theater")
FOODS = ("apples", "bread", "cheese", "rice", "soup", "tea", "coffee", "oranges", "cookies", "pasta",
         "salad", "honey")
ADJECTIVES = ("quiet", "busy", "bright", "small", "large", "famous", "beautiful", "old", "modern",
              "friendly", "cold", "warm")
WEATHER = ("sunny", "rainy", "windy", "cloudy", "snowy", "foggy")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
HOBBIES = ("reading books", "playing chess", "painting", "running", "cooking", "writing poems",
           "learning music", "watching films", "swimming", "gardening")
TOPICS = (("exercise", "improves your health and gives you more energy"),
          ("sleep", "helps the brain rest and store new memories"),
          ("reading", "builds vocabulary and improves focus"),
          ("travel", "shows you new cultures and ways of life"),
          ("saving money", "protects you from surprises and helps you plan"),
          ("learning a language", "opens doors to new friends and jobs"),
          ("drinking water", "keeps the body cool and the mind clear"),
          ("writing code", "teaches you to break big problems into small steps"))
OPS = (("add", "+", "plus", lambda a, b: a + b), ("subtract", "-", "minus", lambda a, b: a - b),
       ("multiply", "*", "times", lambda a, b: a * b))
SYSTEM_PROMPTS = (
    "You are a helpful, respectful and honest assistant.",
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, "
    "while being safe.",
    "You are a friendly assistant who gives short and clear answers.")


def _capital(r: random.Random) -> tuple[str, str]:
    country, city, lang = r.choice(COUNTRIES)
    return (f"What is the capital of {country}?",
            f"The capital of {country} is {city}. People in {country} speak {lang}, and {city} is "
            f"a {r.choice(ADJECTIVES)} city with many parks and museums.")


def _animal(r: random.Random) -> tuple[str, str]:
    name, home, food, sound = r.choice(ANIMALS)
    return (r.choice((f"Tell me about the {name}.", f"What does a {name} eat?",
                      f"Where does the {name} live?")),
            f"The {name} lives in the {home} and eats {food}. When it is happy, the {name} "
            f"{sound}. Many people think the {name} is a {r.choice(ADJECTIVES)} animal.")


def _math(r: random.Random) -> tuple[str, str]:
    _, sym, word, fn = r.choice(OPS)
    a, b = r.randint(1, 20), r.randint(1, 20)
    return (f"What is {a} {word} {b}?", f"{a} {word} {b} is {fn(a, b)}. We can write it as "
                                        f"{a} {sym} {b} = {fn(a, b)}.")


def _code(r: random.Random) -> tuple[str, str]:
    verb, sym, _, _ = r.choice(OPS)
    x, y = r.choice((("a", "b"), ("x", "y"), ("left", "right")))
    return (f"Write a Python function to {verb} two numbers.",
            f"Here is a simple function:\n\ndef {verb}({x}, {y}):\n    return {x} {sym} {y}\n\n"
            f"print({verb}({r.randint(1, 9)}, {r.randint(1, 9)}))\n\n"
            f"The function takes two numbers and returns the result.")


def _loop(r: random.Random) -> tuple[str, str]:
    n, item = r.randint(2, 9), r.choice(FOODS)
    return (f"How do I print the numbers from 0 to {n} in Python?",
            f"Use a for loop:\n\nfor i in range({n + 1}):\n    print(i)\n\n"
            f"You can also store them in a list: {item} = [i for i in range({n + 1})]")


def _planet(r: random.Random) -> tuple[str, str]:
    i = r.randrange(len(PLANETS))
    return (f"Which planet is number {i + 1} from the Sun?",
            f"{PLANETS[i]} is planet number {i + 1} from the Sun. The solar system has eight "
            f"planets, from Mercury to Neptune.")


def _story(r: random.Random) -> tuple[str, str]:
    who, friend = r.sample(NAMES, 2)
    place, food, day = r.choice(PLACES), r.choice(FOODS), r.choice(DAYS)
    return (f"Write a short story about {who}.",
            f"On a {r.choice(WEATHER)} {day}, {who} went to the {place} to buy some {food}. "
            f"There {who} met {friend}, who loves {r.choice(HOBBIES)}. They talked for an hour "
            f"and then went home happy.")


def _advice(r: random.Random) -> tuple[str, str]:
    topic, why = r.choice(TOPICS)
    return (f"Why is {topic} important?",
            f"{topic.capitalize()} is important because it {why}. Start small, be patient, and "
            f"make it part of your daily routine.")


QUESTIONS = (_capital, _animal, _math, _code, _loop, _planet, _story, _advice)


def render_chat(messages: Sequence[dict], add_generation_prompt: bool = False) -> str:
    """Python twin of CHAT_TEMPLATE (checked against the Jinja rendering in the tests)."""
    turns = "".join(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}{EOT}"
                    for m in messages)
    prompt = "<|start_header_id|>assistant<|end_header_id|>\n\n" if add_generation_prompt else ""
    return BOS + turns + prompt


def _chat(r: random.Random) -> str:
    messages = [{"role": "system", "content": r.choice(SYSTEM_PROMPTS)}] if r.random() < 0.5 else []
    for _ in range(r.choice((1, 1, 2))):
        question, answer = r.choice(QUESTIONS)(r)
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return render_chat(messages)


def _prose(r: random.Random) -> str:
    parts = [r.choice(QUESTIONS)(r)[1] for _ in range(r.randint(1, 3))]
    return BOS + " ".join(parts) + EOT_TEXT


def corpus(documents: int) -> Iterator[str]:
    """Deterministic documents: mostly chats, some plain text ending in <|end_of_text|>."""
    r = random.Random(CORPUS_SEED)
    for _ in range(documents):
        yield _chat(r) if r.random() < 0.8 else _prose(r)
