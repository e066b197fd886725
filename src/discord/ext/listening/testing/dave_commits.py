"""What the DAVE group server does once it accepted a commit, and the messages of its transitions.

:class:`.dave_server.DaveGroupServer` decides which commit wins (the rules are
:func:`.dave_state.check_commit`) and when a transition executes; this module holds the
bookkeeping and the messages that follow, as plain functions over its records:

- :func:`group_members` and :func:`place_commit`: who is in the group, and the leaves a
  winning commit removes and adds (RFC 9420 12.3 order);
- :func:`commit_messages`: op 29 to the members that stay, op 30 to the joiners;
- :func:`execute_messages`, :func:`sole_member_reset_messages`, :func:`downgrade_messages`
  and :func:`upgrade_messages`: ops 22, 24 and 21 of transitions and group resets.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Iterable, Mapping

from .dave_messages import (
    INIT_TRANSITION_ID,
    OP_ANNOUNCE_COMMIT,
    OP_EXECUTE_TRANSITION,
    OP_PREPARE_EPOCH,
    OP_PREPARE_TRANSITION,
    OP_WELCOME,
    DaveBinaryMessage,
    DaveMessage,
    json_message,
)
from .dave_state import Leaf, Participant, PendingTransition, Proposal
from .mls import Welcome

__all__ = (
    "commit_messages",
    "downgrade_messages",
    "execute_messages",
    "group_members",
    "place_commit",
    "sole_member_reset_messages",
    "upgrade_messages",
)


def group_members(leaves: Mapping[int, Leaf], participants: Mapping[int, Participant]) -> dict[int, int]:
    """Members of an established group: ``user_id -> leaf index`` of leaves neither removed nor left."""
    return {
        leaf.user_id: index
        for index, leaf in sorted(leaves.items())
        if not leaf.remove and leaf.user_id in participants
    }


def place_commit(
    leaves: dict[int, Leaf],
    participants: Mapping[int, Participant],
    welcome: Welcome | None,
    removes: list[Proposal],
    adds: list[Proposal],
) -> tuple[list[int], list[tuple[int, bytes]]]:
    """Apply an accepted commit's removes, then its adds, to ``leaves`` and the joiners.

    Returns who gets op 29 (the participants that stay in the group, in join order) and
    the op 30 welcomes ``(user_id, welcome for its key package)``.
    """
    # RFC 9420 12.3: removes are applied before adds, and each add takes the
    # leftmost blank leaf (a removed leaf is blank), in the order of the commit.
    for proposal in removes:
        leaves.pop(proposal.leaf, None)  # type: ignore[arg-type]
    staying = group_members(leaves, participants)  # after the removes, before the adds: who gets op 29
    announce_to = [uid for uid in participants if uid in staying]
    welcomes: list[tuple[int, bytes]] = []
    for proposal in adds:
        index = next(i for i in itertools.count() if i not in leaves)
        kp = proposal.key_package
        assert kp is not None and welcome is not None
        leaves[index] = Leaf(proposal.user_id, kp.leaf_node.signature_key)
        joiner = participants[proposal.user_id]
        joiner.leaf = index
        # The gateway drops a cached key package once it has a welcome for it.
        joiner.key_package = None
        welcomes.append((proposal.user_id, welcome.for_recipient(kp.ref())))
    return announce_to, welcomes


def commit_messages(
    transition_id: int, commit: bytes, announce_to: Iterable[int], welcomes: Iterable[tuple[int, bytes]]
) -> list[DaveMessage]:
    """Op 29 ``>H transition_id + commit`` to each of ``announce_to``, then op 30 to each joiner."""
    head = struct.pack(">H", transition_id)
    out: list[DaveMessage] = [DaveBinaryMessage(uid, OP_ANNOUNCE_COMMIT, head + commit) for uid in announce_to]
    out += [DaveBinaryMessage(uid, OP_WELCOME, head + data) for uid, data in welcomes]
    return out


def execute_messages(transition: PendingTransition | None, join_order: Iterable[int]) -> list[DaveMessage]:
    """Op 22 for a transition that executes now, to its recipients in join order (``None``: nothing)."""
    if transition is None:
        return []
    return [
        json_message(uid, OP_EXECUTE_TRANSITION, transition_id=transition.transition_id)
        for uid in join_order
        if uid in transition.recipients
    ]


def sole_member_reset_messages(survivors: Iterable[int], protocol_version: int) -> list[DaveMessage]:
    """Op 24 epoch 1 (start over with a new key package) and op 21 transition 0 (switch at once) to each."""
    out: list[DaveMessage] = []
    for user_id in survivors:
        out.append(json_message(user_id, OP_PREPARE_EPOCH, epoch=1, protocol_version=protocol_version))
        out.append(
            json_message(
                user_id, OP_PREPARE_TRANSITION, transition_id=INIT_TRANSITION_ID, protocol_version=protocol_version
            )
        )
    return out


def downgrade_messages(transition_id: int, dave_users: Iterable[int]) -> list[DaveMessage]:
    """Op 21 ``{protocol_version: 0}`` of the downgrade's transition to every DAVE participant."""
    return [
        json_message(uid, OP_PREPARE_TRANSITION, transition_id=transition_id, protocol_version=0) for uid in dave_users
    ]


def upgrade_messages(dave_users: Iterable[int], protocol_version: int) -> list[DaveMessage]:
    """Op 24 epoch 1 to every DAVE participant: each resets and sends a key package for the new group."""
    return [json_message(uid, OP_PREPARE_EPOCH, epoch=1, protocol_version=protocol_version) for uid in dave_users]
