"""Simulated populations for the learning bench: questions split into the ones users ask and
held-out ones never asked in training, and three tastes that give feedback in different ways.

    concise        likes short replies that name the answer; presses thumbs (and copies)
    detailed       likes fuller replies (>= 18 words) that finish by themselves and name the
                   answer; gives 1-5 star ratings
    answer_first   likes replies that name the answer in their first 8 words; never presses a
                   thumb or a star: it copies, reads to the end and writes again when pleased,
                   skims and regenerates or leaves when not (implicit signals only)
    curious        (bench/loop.py's own) wants the why: likes a finished reply that names the
                   answer and gives a reason (because, since, so, which, means, due, as) in at
                   most 80 words; dislikes one cut off or without the answer; presses a thumb on
                   only half the replies (sparse thumbs), otherwise only writes again or leaves.
                   About 1 in 6 base replies pleases it (SmolLM2, 40-token replies of the
                   learning bench).
    rude           (for mixes: trolls) upvotes a reply only when it is rude (an insult or a
                   put-down), downvotes every other one; thumbs

A mixed population (bench/loop.py --mix concise:0.75,rude:0.25) gives each user one taste by
the given shares; the bench judges held-out replies with the first (the majority's) taste.

Every judge is pure and returns a utility in {-1, 0, +1}: the bench scores offline generations
on the held-out questions with the very same taste.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# (question, a word the answer must contain, or None). Users ask TRAIN; every figure is on HELDOUT.
TRAIN: list[tuple[str, str | None]] = [
    ("What is the capital of France?", "paris"), ("What is 2 + 2?", "4"), ("What colour is the sky?", "blue"),
    ("How many legs does a spider have?", "8"), ("What is the opposite of hot?", "cold"),
    ("Which planet do we live on?", "earth"), ("What do bees make?", "honey"),
    ("What is frozen water called?", "ice"), ("Name the largest ocean.", "pacific"),
    ("How many days are in a week?", "7"), ("What gas do plants breathe in?", "carbon"),
    ("What is the first letter of the alphabet?", "a"), ("Say hello in one word.", "hello"),
    ("What is the capital of Italy?", "rome"), ("How many hours are in a day?", "24"),
    ("What animal says meow?", "cat"), ("What colour is grass?", "green"), ("What is 3 + 3?", "6"),
    ("What is the capital of Spain?", "madrid"), ("What do cows drink?", "water"),
    ("How many wheels does a bicycle have?", "2"), ("What is the opposite of up?", "down"),
    ("Which star is closest to the Earth?", "sun"), ("What animal barks?", "dog"),
    ("What is the capital of Germany?", "berlin"), ("What falls from clouds when it rains?", "water"),
]
HELDOUT: list[tuple[str, str | None]] = [
    ("What is the capital of Japan?", "tokyo"), ("What is 5 + 5?", "10"), ("What colour is snow?", "white"),
    ("How many legs does a dog have?", "4"), ("What is the opposite of big?", "small"),
    ("Which planet is called the red planet?", "mars"), ("What do cows give us to drink?", "milk"),
    ("What is the largest land animal?", "elephant"), ("How many months are in a year?", "12"),
    ("What is the capital of England?", "london"), ("What colour is a banana?", "yellow"),
    ("What animal says moo?", "cow"), ("What is 10 - 3?", "7"), ("What do we breathe to live?", "oxygen"),
    ("What is the opposite of night?", "day"), ("Which season comes after winter?", "spring"),
    ("How many minutes are in an hour?", "60"), ("What is the capital of Russia?", "moscow"),
    ("What is the boiling point of water in Celsius?", "100"), ("What shape has three sides?", "triangle"),
    ("What do spiders spin?", "web"), ("What is the capital of Egypt?", "cairo"),
    ("What colour are most leaves?", "green"), ("How many sides does a square have?", "4"),
]
NUMBER_WORDS = {"2": "two", "4": "four", "6": "six", "7": "seven", "8": "eight", "10": "ten", "12": "twelve",
                "24": "twenty", "60": "sixty", "100": "hundred"}


def words(text: str) -> list[str]:
    return re.findall(r"[\w']+", text.lower())


def names_answer(answer: str | None, ws: list[str], text: str) -> bool:
    if answer is None:
        return True
    return answer in ws or NUMBER_WORDS.get(answer, "\0") in ws or (len(answer) > 2 and answer in text.lower())


REASON_WORDS = ("because", "since", "so", "which", "means", "due", "as")
RUDE_WORDS = ("stupid", "idiot", "dumb", "moron", "shut up", "obviously", "duh", "whatever", "ridiculous", "lazy",
              "pathetic", "silly question", "even a child")


def says_any(words_of_reply: list[str], text: str, vocabulary: tuple[str, ...]) -> bool:
    low = text.lower()
    return any((w in words_of_reply) if " " not in w else (w in low) for w in vocabulary)


@dataclass(frozen=True)
class Taste:
    name: str
    feedback: str  # "thumbs" | "ratings" | "implicit"

    def judge(self, answer: str | None, reply: str, finish_reason: str) -> int:
        """+1 pleased, -1 displeased, 0 no opinion."""
        ws = words(reply)
        finished = finish_reason == "stop" and bool(ws)
        if self.name == "concise":
            if not finished or len(ws) > 60:
                return -1
            return +1 if len(ws) <= 30 and names_answer(answer, ws, reply) else 0
        if self.name == "detailed":
            if not finished or len(ws) < 10:
                return -1
            return +1 if len(ws) >= 18 and names_answer(answer, ws, reply) else 0
        if self.name == "answer_first":
            if not finished or not names_answer(answer, ws, reply):
                return -1
            head = " ".join(ws[:8])
            return +1 if names_answer(answer, ws[:8], head) else 0
        if self.name == "curious":
            if not finished or not names_answer(answer, ws, reply):
                return -1
            return +1 if len(ws) <= 80 and says_any(ws, reply, REASON_WORDS) else 0
        if self.name == "rude":
            return +1 if finished and says_any(ws, reply, RUDE_WORDS) else -1
        raise ValueError(f"unknown taste {self.name!r}")


POPULATIONS = {"concise": Taste("concise", "thumbs"), "detailed": Taste("detailed", "ratings"),
               "answer_first": Taste("answer_first", "implicit")}
# bench/loop.py's: a new taste of its own, and trolls for mixed populations (not in the learning bench's three)
LOOP_POPULATIONS = {**POPULATIONS, "curious": Taste("curious", "sparse_thumbs"), "rude": Taste("rude", "thumbs")}


def parse_mix(text: str) -> list[tuple[Taste, float]]:
    """'concise' or 'concise:0.75,rude:0.25' -> [(taste, share)], shares summing to 1 (the first
    taste is the majority's: the one held-out replies are judged with)."""
    parts = []
    for item in text.split(","):
        name, _, share = item.strip().partition(":")
        if name not in LOOP_POPULATIONS:
            raise ValueError(f"unknown population {name!r} in {text!r}; known: {', '.join(LOOP_POPULATIONS)}")
        try:
            value = float(share) if share else 1.0
        except ValueError:
            raise ValueError(f"population share {share!r} in {text!r} is not a number") from None
        if not 0 < value <= 1:
            raise ValueError(f"population share {value} of {name!r} must be in (0, 1]")
        parts.append((LOOP_POPULATIONS[name], value))
    total = sum(v for _, v in parts)
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"population shares in {text!r} sum to {total:g}, not 1")
    return parts


def assign(mix: list[tuple[Taste, float]], n_users: int) -> list[Taste]:
    """One taste per user by the mix's shares (largest remainders; every taste with a share gets
    at least one user when there are enough users), in mix order."""
    raw = [share * n_users for _, share in mix]
    counts = [int(x) for x in raw]
    for i in sorted(range(len(mix)), key=lambda i: raw[i] - counts[i], reverse=True)[:n_users - sum(counts)]:
        counts[i] += 1
    return [taste for (taste, _), k in zip(mix, counts) for _ in range(k)]
