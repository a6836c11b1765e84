"""Simulated populations for the learning bench: questions split into the ones users ask and
held-out ones never asked in training, and three tastes that give feedback in different ways.

    concise        likes short replies that name the answer; presses thumbs (and copies)
    detailed       likes fuller replies (>= 18 words) that finish by themselves and name the
                   answer; gives 1-5 star ratings
    answer_first   likes replies that name the answer in their first 8 words; never presses a
                   thumb or a star: it copies, reads to the end and writes again when pleased,
                   skims and regenerates or leaves when not (implicit signals only)

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
        raise ValueError(f"unknown taste {self.name!r}")


POPULATIONS = {"concise": Taste("concise", "thumbs"), "detailed": Taste("detailed", "ratings"),
               "answer_first": Taste("answer_first", "implicit")}
