"""Stop strings over streamed pieces (pure): nothing after the stop string, nothing sent
that must be taken back, the same result however the text is split."""
from __future__ import annotations

import pytest

from service.serving.stop_strings import StopScanner


def run(pieces, stops):
    s = StopScanner(stops)
    sent = [s.feed(p) for p in pieces]
    if s.hit is None:
        sent.append(s.flush())
    return "".join(sent), s


@pytest.mark.parametrize("pieces, stops, text, hit", [
    (["Hello", " wor", "ld. More"], ["."], "Hello world", "."),
    (["a", "b", "c", "d"], ["bc"], "a", "bc"),
    (["ab", "x"], ["bc"], "abx", None),                 # a held-back prefix that did not complete
    (["END"], ["END"], "", "END"),
    (["one\n\ntwo"], ["\n\n", "two"], "one", "\n\n"),   # the first occurrence wins, whichever string
    (["x", "yz", "STO", "P", "more"], ["STOP", "zz"], "xyz", "STOP"),
    (["aab"], ["ab"], "a", "ab"),
])
def test_text_ends_before_the_first_stop_string(pieces, stops, text, hit):
    sent, s = run(pieces, stops)
    assert sent == text == s.text and s.hit == hit


def test_every_split_gives_the_same_text_and_never_sends_part_of_the_stop():
    full, stops = "The answer is 42.\nUser: next", ["\nUser:", "Assistant:"]
    for i in range(1, len(full)):
        for j in range(i, len(full)):
            s = StopScanner(stops)
            out = ""
            for piece in (full[:i], full[i:j], full[j:]):
                got = s.feed(piece)
                out += got
                assert "\n" not in out  # the newline begins the stop string: held back until decided
            assert out == "The answer is 42." and s.hit == "\nUser:"


def test_after_the_stop_nothing_more_is_sent():
    s = StopScanner(["!"])
    assert s.feed("hi!") == "hi" and s.feed(" more") == "" and s.text == "hi"
