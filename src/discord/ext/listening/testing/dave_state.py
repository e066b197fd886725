"""The records the DAVE group server keeps, and the rules it checks against them.

:class:`.dave_server.DaveGroupServer` decides; this module holds what it decides over:

- :class:`Transitions` of :class:`PendingTransition`: transitions the server announced
  and has not executed yet (who must still report ready with op 23, who gets op 22).
- :class:`Participant`, :class:`Leaf`, :class:`Proposal`: a connected user, a leaf of the
  established group, an in-flight proposal of the current epoch.
- :class:`Proposals`: the epoch's proposals and who holds which; it revokes, creates and
  delivers them to match who should be in the group.
- :func:`committer_of` and :func:`check_commit`: who may commit, and why an op 28 commit
  cannot be accepted (``None`` if it can).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from . import mls
from .dave_messages import (
    OP_PROPOSALS,
    PROPOSALS_APPEND,
    PROPOSALS_REVOKE,
    DaveBinaryMessage,
    DaveMessage,
    encode_proposals_payload,
)
from .external_sender import ExternalSender
from .mls import KeyPackage, Welcome

__all__ = (
    "Committer",
    "Leaf",
    "Participant",
    "PendingTransition",
    "Proposal",
    "Proposals",
    "Transitions",
    "check_commit",
    "committer_of",
)

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PendingTransition:
    """A transition the server announced and has not executed yet.

    Attributes
    ----------
    transition_id : int
        1..65535 (0 is never pending: it executes at once).
    protocol_version : int
        The protocol version in effect after the transition.
    epoch : int or None
        The MLS epoch the transition moves to (``None`` for a downgrade).
    awaiting : frozenset[int]
        Users whose op 23 (ready) is still missing.
    recipients : frozenset[int]
        Users that get op 22 (execute).
    """

    transition_id: int
    protocol_version: int
    epoch: int | None
    awaiting: frozenset[int]
    recipients: frozenset[int]


class Transitions:
    """The pending transitions of one group, by id (ids 1..65535, handed out in turn)."""

    def __init__(self) -> None:
        self._pending: dict[int, PendingTransition] = {}
        self._counter = itertools.count(1)

    @property
    def pending(self) -> dict[int, PendingTransition]:
        """A copy of the pending transitions, by id."""
        return dict(self._pending)

    def get(self, transition_id: int) -> PendingTransition | None:
        """The pending transition with this id, if any."""
        return self._pending.get(transition_id)

    def open(self, protocol_version: int, epoch: int | None, users: frozenset[int]) -> PendingTransition:
        """A new pending transition that waits for ``users`` and executes for them."""
        transition = PendingTransition(self._new_id(), protocol_version, epoch, users, users)
        self._pending[transition.transition_id] = transition
        return transition

    def pop(self, transition_id: int) -> PendingTransition | None:
        """Take a transition out (to execute it now); ``None`` if it is not pending."""
        return self._pending.pop(transition_id, None)

    def ready(
        self, transition: PendingTransition, user_id: int, *, executes_for_it: bool = True
    ) -> PendingTransition | None:
        """``user_id`` no longer holds ``transition`` back.

        Returns
        -------
        Optional[PendingTransition]
            The transition, taken out, when nobody else is awaited: execute it now.
        """
        recipients = transition.recipients if executes_for_it else transition.recipients - {user_id}
        transition = PendingTransition(
            transition.transition_id,
            transition.protocol_version,
            transition.epoch,
            transition.awaiting - {user_id},
            recipients,
        )
        if transition.awaiting:
            self._pending[transition.transition_id] = transition
            return None
        del self._pending[transition.transition_id]
        return transition

    def forget(self, user_id: int) -> list[PendingTransition]:
        """``user_id`` left: stop waiting for it and sending it op 22.

        Returns
        -------
        list[PendingTransition]
            Transitions that were only waiting for it, taken out: execute them now.
        """
        done: list[PendingTransition] = []
        for transition in list(self._pending.values()):
            if user_id in transition.awaiting:
                executes = self.ready(transition, user_id, executes_for_it=False)
                if executes is not None:
                    done.append(executes)
            elif user_id in transition.recipients:
                self._pending[transition.transition_id] = PendingTransition(
                    transition.transition_id,
                    transition.protocol_version,
                    transition.epoch,
                    transition.awaiting,
                    transition.recipients - {user_id},
                )
        return done

    def _new_id(self) -> int:
        for _ in range(0xFFFF):
            candidate = (next(self._counter) - 1) % 0xFFFF + 1  # 1..65535, never 0
            if candidate not in self._pending:
                return candidate
        raise RuntimeError("65535 transitions pending")  # pragma: no cover - needs a broken shell


@dataclass(eq=False)
class Participant:
    """A user connected to the call, as the group server sees it."""

    user_id: int
    version: int  # effective max protocol version (0 = no DAVE support)
    key_package: KeyPackage | None = None  # newest key package not welcomed yet
    leaf: int | None = None  # leaf index in the established group
    sent_external_sender: bool = False


@dataclass(eq=False)
class Leaf:
    """A leaf of the established group: whose it is and the signature key it committed with."""

    user_id: int
    signature_key: bytes
    remove: bool = False  # the next commit must remove this leaf


@dataclass(eq=False)
class Proposal:
    """An Add or Remove proposal the server signed for the current epoch."""

    ref: bytes
    message: bytes
    user_id: int  # add: the joiner; remove: the leaf's owner
    key_package: KeyPackage | None = None  # add proposals
    leaf: int | None = None  # remove proposals
    delivered: set[int] = field(default_factory=set)  # users whose MLS state holds it

    @property
    def is_add(self) -> bool:
        """Whether it adds a joiner (else it removes a leaf)."""
        return self.key_package is not None


class Proposals:
    """The in-flight proposals of one group's current epoch, in creation order.

    Parameters
    ----------
    group_id : bytes
        The MLS group the proposals are for.
    external_sender : ExternalSender
        Signs them (the server is the group's external sender).
    """

    def __init__(self, group_id: bytes, external_sender: ExternalSender) -> None:
        self.group_id = group_id
        self.external_sender = external_sender
        #: The proposals by reference; insertion order = creation order.
        self.by_ref: dict[bytes, Proposal] = {}

    @property
    def messages(self) -> tuple[bytes, ...]:
        """The unrevoked proposal messages, in creation order."""
        return tuple(p.message for p in self.by_ref.values())

    def clear(self) -> None:
        """Forget them all: the epoch changed, or the group is gone."""
        self.by_ref.clear()

    def forget_holder(self, user_id: int) -> None:
        """``user_id``'s MLS state holds none of them any more (it left or reset)."""
        for proposal in self.by_ref.values():
            proposal.delivered.discard(user_id)

    def expected_refs(self, committer: int, *, established: bool) -> set[bytes]:
        """The references a commit by ``committer`` must cover, exactly.

        All of them in an established group; before that, all but the committer's own
        Add (its local group is the one the others join).
        """
        if established:
            return set(self.by_ref)
        return {ref for ref, p in self.by_ref.items() if not (p.is_add and p.user_id == committer)}

    def sync(
        self,
        participants: Mapping[int, Participant],
        leaves: Mapping[int, Leaf],
        *,
        epoch: int,
        members: Collection[int] | None,
    ) -> list[DaveMessage]:
        """Bring the proposals in line with who should be in the group.

        Revokes Add proposals that no longer apply, creates the Add / Remove proposals
        the epoch needs, and sends every holder the proposals it lacks.

        Parameters
        ----------
        participants : mapping of int to Participant
            The connected users, in join order (the order of the messages).
        leaves : mapping of int to Leaf
            The established group's leaves by index (empty before it exists).
        epoch : int
            The group's current epoch.
        members : collection of int or None
            The established group's members; ``None`` before the group exists.
        """
        established = members is not None
        out: list[DaveMessage] = []
        # 1. Revoke Add proposals whose key package is no longer the user's current one
        #    (left, replaced it, reset its state) so commits stop covering them.
        revokes: dict[int, list[bytes]] = {}
        for ref, proposal in list(self.by_ref.items()):
            if not proposal.is_add:
                continue
            owner = participants.get(proposal.user_id)
            if owner is not None and owner.key_package is proposal.key_package and owner.leaf is None:
                continue
            del self.by_ref[ref]
            for holder in proposal.delivered:
                if holder in participants:
                    revokes.setdefault(holder, []).append(ref)
        for holder in participants:  # join order: deterministic output
            if holder in revokes:
                out.append(
                    DaveBinaryMessage(holder, OP_PROPOSALS, encode_proposals_payload(PROPOSALS_REVOKE, revokes[holder]))
                )

        # 2. Create the proposals the current epoch needs.
        if established:
            removing = {p.leaf for p in self.by_ref.values() if not p.is_add}
            for index, leaf in sorted(leaves.items()):
                if leaf.remove and index not in removing:
                    self._new(
                        self.external_sender.remove_proposal(self.group_id, epoch, index),
                        leaf.user_id,
                        epoch,
                        leaf=index,
                    )
        adding = {p.user_id for p in self.by_ref.values() if p.is_add}
        for participant in participants.values():
            if participant.key_package is not None and participant.leaf is None and participant.user_id not in adding:
                self._new(
                    self.external_sender.add_proposal(self.group_id, epoch, participant.key_package.raw),
                    participant.user_id,
                    epoch,
                    key_package=participant.key_package,
                )

        # 3. Deliver. Established: all members get the same batch (they all hold the
        #    same proposals). Not established: each pending member's local group needs
        #    everybody's Add but its own.
        for holder in self._holders(participants, members):
            missing = [
                p
                for p in self.by_ref.values()
                if holder not in p.delivered and not (p.is_add and p.user_id == holder and not established)
            ]
            if not missing:
                continue
            for p in missing:
                p.delivered.add(holder)
            out.append(
                DaveBinaryMessage(
                    holder,
                    OP_PROPOSALS,
                    encode_proposals_payload(PROPOSALS_APPEND, [p.message for p in missing]),
                )
            )
        return out

    @staticmethod
    def _holders(participants: Mapping[int, Participant], members: Collection[int] | None) -> list[int]:
        """Users whose MLS state takes the proposals, in join order."""
        if members is not None:
            return [uid for uid in participants if uid in members]
        return [
            p.user_id for p in participants.values() if p.version > 0 and p.key_package is not None and p.leaf is None
        ]

    def _new(
        self,
        message: bytes,
        user_id: int,
        epoch: int,
        *,
        key_package: KeyPackage | None = None,
        leaf: int | None = None,
    ) -> None:
        # Sign once and keep the bytes: ECDSA signatures are randomised, and every
        # member must commit to the very same proposal reference.
        ref = mls.proposal_ref(message)
        self.by_ref[ref] = Proposal(ref, message, user_id, key_package=key_package, leaf=leaf)
        kind = "add" if key_package is not None else f"remove leaf {leaf}"
        _log.debug("proposal %s for user %s at epoch %s", kind, user_id, epoch)


class Committer(NamedTuple):
    """Who may commit: the leaf a commit must come from and the key it must keep."""

    user_id: int
    leaf: int
    signature_key: bytes


def committer_of(participant: Participant, leaves: Mapping[int, Leaf], *, established: bool) -> Committer | str:
    """The leaf a commit by ``participant`` must come from and the key it must keep.

    Or why it cannot commit at all (``"not_a_member"``, ``"no_local_group"``), which
    :func:`check_commit` reports once the commit's framing checked out.
    """
    if established:
        if participant.leaf is None or leaves[participant.leaf].remove:
            return "not_a_member"
        return Committer(participant.user_id, participant.leaf, leaves[participant.leaf].signature_key)
    if participant.key_package is None:
        return "no_local_group"
    # The creator's leaf of its local group is leaf 0.
    return Committer(participant.user_id, 0, participant.key_package.leaf_node.signature_key)


def check_commit(
    message: mls.PublicMessage,
    welcome: Welcome | None,
    *,
    group_id: bytes,
    epoch: int,
    committer: Committer | str,
    proposals: Mapping[bytes, Proposal],
    expected_refs: set[bytes],
) -> tuple[str | None, list[Proposal], list[Proposal]]:
    """Why the commit cannot be accepted (``None`` if it can), and its removes and adds.

    Parameters
    ----------
    message : mls.PublicMessage
        The commit of an op 28.
    welcome : Optional[mls.Welcome]
        The welcome that came with it.
    group_id, epoch :
        The group's id and current epoch.
    committer : Committer or str
        The sender's leaf and signature key, or why the sender cannot commit at all
        (reported once the commit's framing checked out).
    proposals : mapping of bytes to Proposal
        The epoch's proposals by reference.
    expected_refs : set[bytes]
        The references the commit must cover, exactly.
    """
    if message.content_type != mls.CONTENT_TYPE_COMMIT or message.commit is None:
        return "not_a_commit", [], []
    if message.group_id != group_id:
        return "wrong_group", [], []
    if message.epoch != epoch:
        # The usual loser of a commit race, or a commit for an epoch the client
        # has not caught up with: Discord only broadcasts commits for the current epoch.
        return "stale_epoch", [], []
    if message.sender_type != mls.SENDER_MEMBER:
        return "not_a_member_sender", [], []
    if isinstance(committer, str):
        return committer, [], []
    if message.sender_index != committer.leaf:
        return "wrong_sender_leaf", [], []

    refs = []
    for item in message.commit.proposals:
        if item.reference is None:
            return "inline_proposal", [], []
        refs.append(item.reference)
    if not refs:
        return "no_proposals", [], []
    if len(set(refs)) != len(refs) or set(refs) != expected_refs:
        return "proposals_mismatch", [], []

    leaf = message.commit.path_leaf_node
    if leaf is not None and (
        leaf.signature_key != committer.signature_key or leaf.credential.user_id != committer.user_id
    ):
        return "leaf_identity_changed", [], []

    chosen = [proposals[ref] for ref in refs]
    removes = [p for p in chosen if not p.is_add]
    adds = [p for p in chosen if p.is_add]
    if adds:
        if welcome is None:
            return "missing_welcome", [], []
        recipients = set(welcome.recipients())
        if any(p.key_package is not None and p.key_package.ref() not in recipients for p in adds):
            return "welcome_misses_joiner", [], []
    elif welcome is not None:
        return "unexpected_welcome", [], []
    return None, removes, adds
