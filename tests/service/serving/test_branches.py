"""Pure parts of conversations: the reply tree (branches, siblings, replies logged before
parents), the protocol's branch and reason fields, titles, and reason tags in the ops series."""
import json

import pytest

from service.api.ws import title_of
from service.serving.branches import Node, branch_to, node_from_fields, preferred_how, siblings
from service.serving.protocol import Feedback, ProtocolError, Select, parse_client_frame
from worker.ops import series

# r1 -> (m2) r2 | r4 (regenerated) | r5, r6 candidates ; r1 -> (m3 edit) r3 ; r3 -> r7
NODES = {n.reply_id: n for n in (
    Node("r1", "", "m1"), Node("r2", "r1", "m2"), Node("r3", "r1", "m3"), Node("r4", "r1", "m2"),
    Node("r5", "r1", "m2", ("r5", "r6")), Node("r6", "r1", "m2", ("r5", "r6")), Node("r7", "r3", "m4"))}


def test_branch_is_the_chain_of_parents():
    assert branch_to(NODES, "r7") == ["r1", "r3", "r7"]
    assert branch_to(NODES, "r4") == ["r1", "r4"]
    assert branch_to(NODES, "") == [] and branch_to(NODES, "nope") == []
    loop = {"a": Node("a", "b", "m"), "b": Node("b", "a", "m")}
    assert branch_to(loop, "a") == ["b", "a"]   # corrupted data cannot hang the server


def test_siblings_answer_the_same_message_after_the_same_parent():
    assert siblings(NODES, "r2") == ["r4", "r5", "r6"]
    assert siblings(NODES, "r5") == ["r2", "r4"]          # not its own compare partner
    assert siblings(NODES, "r3") == [] and siblings(NODES, "r7") == [] and siblings(NODES, "zz") == []


def test_replies_logged_before_parents_take_them_from_the_history():
    history = ["a", "b", "c"]
    assert node_from_fields("b", None, "m", None, "1", history).parent_id == "a"
    assert node_from_fields("a", None, None, None, "0", history).parent_id == ""
    assert node_from_fields("x", None, "m", '["x","y"]', "2", history) == Node("x", "b", "m", ("x", "y"))
    assert node_from_fields("y", "", "m", "not json", "5", history) == Node("y", "", "m", ())


def test_what_makes_a_sibling_preferred():
    assert preferred_how("copy", None) == "copied it"
    assert preferred_how("thumbs", 1) == "thumbed it up" and preferred_how("thumbs", -1) is None
    assert preferred_how("rating", 4) == "rated it 4" and preferred_how("rating", 3) is None
    assert preferred_how("dwell", 9000) is None


def parse(frame):
    return parse_client_frame(json.dumps(frame), 8192)


def test_protocol_branch_fields():
    msg = parse({"type": "user_message", "text": "x", "client_msg_id": "c", "parent_id": ""})
    assert (msg.parent_id, msg.edit_of) == ("", None)
    msg = parse({"type": "user_message", "text": "x", "client_msg_id": "c", "parent_id": "r1", "edit_of": "r2"})
    assert (msg.parent_id, msg.edit_of) == ("r1", "r2")
    assert parse({"type": "user_message", "text": "x", "client_msg_id": "c"}).parent_id is None
    with pytest.raises(ProtocolError, match="parent_id") as err:
        parse({"type": "user_message", "text": "x", "client_msg_id": "c", "edit_of": "r2"})
    assert err.value.code == "missing_field"
    assert parse({"type": "select", "reply_id": "r3"}) == Select("r3")


def test_protocol_reason_fields():
    got = parse({"type": "feedback", "feedback_id": "f", "reply_id": "r", "kind": "thumbs", "value": -1,
                 "tags": ["too_long"], "comment": " long "})
    assert got == Feedback("f", "r", "thumbs", -1, None, ("too_long",), "long")
    got = parse({"type": "feedback", "feedback_id": "f", "reply_id": "r", "kind": "reasons", "comment": "ok"})
    assert (got.tags, got.comment, got.value) == ((), "ok", None)
    for bad in ({"kind": "reasons"}, {"kind": "reasons", "tags": ["nope"]}, {"kind": "dwell", "value": 5, "comment": "x"},
                {"kind": "rating", "value": 5, "tags": ["helpful"], "comment": "y" * 501}):
        with pytest.raises(ProtocolError) as err:
            parse({"type": "feedback", "feedback_id": "f", "reply_id": "r", **bad})
        assert err.value.ref == "f" and err.value.code in ("bad_value", "missing_field")


def test_titles_come_from_the_first_line():
    assert title_of("  How do I\n sort a list?") == "How do I"
    long = title_of("word " * 40)
    assert len(long) == 60 and long.endswith("…")


def test_reason_tags_are_counted_per_version_in_the_ops_series():
    inc = series.event_increments({"kind": "reasons", "adapter_version": "3", "tags": '["unsafe", "too_long"]'})
    assert inc[series.field("tag:unsafe", "3")] == 1.0 and inc[series.field("tag:too_long", "3")] == 1.0
    assert not [k for k in series.event_increments({"kind": "copy", "adapter_version": "3"}) if "tag:" in k]
    assert series.tag_names("not json") == [] and series.tag_names('["bad name!"]') == []
    totals = series.by_version(series.merge([inc, inc, series.event_increments(
        {"kind": "thumbs", "value": "1", "adapter_version": "base", "tags": '["helpful"]'})]))
    assert series.tag_counts(totals) == {"3": {"too_long": 2, "unsafe": 2}, "base": {"helpful": 1}}
