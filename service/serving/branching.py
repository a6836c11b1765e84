"""Where a new turn goes in the conversation tree, and what choosing between branches says.

The page sends each message with the reply it follows (`parent_id`): the history given to the
model is the branch that ends there, so it is always the branch on screen. Choices between
branches are signals for the reward pipeline, written once each as derived events:

* `sibling` (reply_id = the preferred answer, value = another answer to the same message, `how`):
  the user went on from an answer, copied it, thumbed it up or rated it 4-5 while it had
  siblings (regenerations). The reward worker gives +/- and a preference pair (source sibling).
* `edited` (reply_id = the answer to the earlier wording, value = the new message's id): the
  user edited their question and asked again, so that answer was not what they wanted.

The tree itself is pure (branches.py); this module reads and writes through ChatStore.
"""
from __future__ import annotations

import logging
import time

from service.serving.auth import User
from service.serving.branches import Node, branch_to, preferred_how, siblings
from service.serving.protocol import ProtocolError, UserMessage
from service.serving.store import ChatStore, new_event_id

log = logging.getLogger(__name__)


class Branching:
    def __init__(self, store: ChatStore):
        self.store = store

    async def for_message(self, session_id: str, msg: UserMessage) -> tuple[list | None, dict[str, Node]]:
        """(the history rows for the plan, the tree) of a message; (None, {}) for a message with
        no parent_id (it follows the session's current branch, as before branches existed)."""
        if msg.parent_id is None:
            return None, {}
        tree = await self.store.tree(session_id)
        ref = msg.client_msg_id
        if msg.parent_id and msg.parent_id not in tree:
            raise ProtocolError("unknown_reply", f"parent_id {msg.parent_id!r} is not a reply of this session: "
                                "send the id of the reply the message follows, or \"\" for the first turn", ref)
        if msg.edit_of is not None:
            old = tree.get(msg.edit_of)
            if old is None or old.parent_id != msg.parent_id:
                raise ProtocolError("bad_value", f"edit_of {msg.edit_of!r} must be a reply of this session that "
                                    f"answers a message after the same parent ({msg.parent_id!r})", ref)
        return await self.store.turns(branch_to(tree, msg.parent_id)), tree

    async def after_message(self, user: User, session_id: str, msg: UserMessage, tree: dict[str, Node]) -> None:
        """Signals of a message sent after a parent: the parent is preferred over its siblings,
        and an edit marks the answer to the earlier wording."""
        if msg.parent_id:
            await self._prefer(user, session_id, tree, msg.parent_id, "went on from it")
        if msg.edit_of:
            await self._derive(user, session_id, "edited", f"derived:edited:{msg.edit_of}", msg.edit_of,
                               msg.client_msg_id)

    async def for_regenerate(self, old: dict) -> list | None:
        """The history rows of a regeneration of `old` (its parent's branch), or None for a
        reply logged before parents were recorded."""
        if "parent_id" not in old:
            return None
        tree = await self.store.tree(old["session_id"])
        return await self.store.turns(branch_to(tree, old["parent_id"]))

    async def select(self, user: User, session_id: str, reply_id: str) -> list[str]:
        """Make the branch ending at reply_id the session's conversation (the arrows on the page)."""
        tree = await self.store.tree(session_id)
        if reply_id not in tree:
            raise ProtocolError("unknown_reply", f"reply {reply_id!r} is not a reply of this session "
                                "(select names the last reply of the branch on screen)", reply_id)
        branch = branch_to(tree, reply_id)
        await self.store.set_branch(session_id, branch)
        return branch

    async def after_feedback(self, user: User, session_id: str, reply_id: str, kind: str, value) -> None:
        """A copy, thumbs-up or rating of 4-5 prefers a reply over its siblings."""
        how = preferred_how(kind, value)
        if how is None:
            return
        await self._prefer(user, session_id, await self.store.tree(session_id), reply_id, how)

    async def _prefer(self, user: User, session_id: str, tree: dict[str, Node], reply_id: str, how: str) -> None:
        for other in siblings(tree, reply_id):
            await self._derive(user, session_id, "sibling", f"derived:sibling:{reply_id}>{other}", reply_id,
                               other, how=how)

    async def _derive(self, user: User, session_id: str, kind: str, key: str, reply_id: str, value: str,
                      **extra) -> bool:
        version = (await self.store.reply_fields(reply_id, "adapter_version"))[0]
        created, _ = await self.store.record_once(key, {
            "event_id": new_event_id(), "kind": kind, "value": value, "reply_id": reply_id,
            "session_id": session_id, "user_id": user.user_id, "adapter_version": version,
            "server_time": repr(time.time()), "derived": 1, **extra})
        if created:
            log.debug("%s: %s on reply %s (%s)", session_id, kind, reply_id, value)
        return created
