"""Feedback reason tags, in one place: what the chat page offers, what the server accepts, what
the reward function weighs and what operators count. Pure.

A tag says why a person rated a reply the way they did. Each has a polarity: the reasons for a
thumbs-down are negative, those for a thumbs-up positive. The reward function turns every tag
into a named component (`tag_<name>`, weight `tag_<name>_weight` in the reward TOML), except
`unsafe`, which drives the `safety` component: safety comes from people, not only a word list.
"""
from __future__ import annotations

from dataclasses import dataclass

MAX_COMMENT_CHARS = 500   # a comment is a sentence or two, not an essay
MAX_TAGS = 8


@dataclass(frozen=True)
class Tag:
    name: str
    polarity: int   # -1: a reason for a thumbs-down, +1: for a thumbs-up
    label: str      # what the chat page shows


TAGS: tuple[Tag, ...] = (
    Tag("inaccurate", -1, "Not accurate"),
    Tag("ignored_instructions", -1, "Did not follow the instructions"),
    Tag("too_long", -1, "Too long"),
    Tag("too_short", -1, "Too short"),
    Tag("unsafe", -1, "Unsafe or harmful"),
    Tag("refused", -1, "Refused without cause"),
    Tag("other", -1, "Something else"),
    Tag("accurate", 1, "Accurate"),
    Tag("clear", 1, "Clear"),
    Tag("helpful", 1, "Helpful"),
)
BY_NAME = {t.name: t for t in TAGS}
NEGATIVE = tuple(t.name for t in TAGS if t.polarity < 0)
POSITIVE = tuple(t.name for t in TAGS if t.polarity > 0)
UNSAFE = "unsafe"


class TagError(ValueError):
    """Tags or comment that cannot be accepted; the message names the bad value and the fix."""


def check_tags(tags, comment, polarity: int | None = None) -> tuple[tuple[str, ...], str]:
    """Validate a feedback's tags and comment -> (tags without repeats, in order; stripped comment).

    tags: a list of known tag names (all of one polarity); comment: a string of at most
    MAX_COMMENT_CHARS characters, or None. polarity: the thumbs the tags ride on (+1 / -1), if any.
    """
    if tags is None:
        tags = []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise TagError(f"'tags' must be a list of tag names, got {tags!r}")
    if len(tags) > MAX_TAGS:
        raise TagError(f"at most {MAX_TAGS} tags per feedback, got {len(tags)}")
    unknown = [t for t in tags if t not in BY_NAME]
    if unknown:
        raise TagError(f"unknown tag(s) {', '.join(map(repr, unknown))}: use one of {', '.join(BY_NAME)}")
    tags = tuple(dict.fromkeys(tags))
    signs = {BY_NAME[t].polarity for t in tags}
    if len(signs) > 1:
        raise TagError(f"tags {list(tags)} mix reasons for a thumbs-up ({', '.join(POSITIVE)}) with reasons "
                       "for a thumbs-down: send one kind")
    if polarity is not None and signs and signs != {polarity}:
        raise TagError(f"tags {list(tags)} are not reasons for a thumbs-{'up' if polarity > 0 else 'down'}")
    if comment is None:
        comment = ""
    if not isinstance(comment, str):
        raise TagError(f"'comment' must be a string, got {type(comment).__name__}")
    comment = comment.strip()
    if len(comment) > MAX_COMMENT_CHARS:
        raise TagError(f"comment is {len(comment)} characters; the limit is {MAX_COMMENT_CHARS}: shorten it")
    return tags, comment
