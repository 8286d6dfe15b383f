"""The coordinator's side of one secure-aggregation session (protocol: `common/secagg.py`).

The coordinator relays every message, tracks the survivor sets U1 (advertised) >= U2 (sent
shares) >= U3 (sent a masked input) >= U4 (signed U3) >= U5 (answered unmask), and at the end
recovers from >= t shares the dropped members' mask keys (U2 minus U3) and the survivors'
self-mask seeds, removes those masks and returns the sum of U3's inputs mod 2^64, decoded to
signed fixed point. A message that fails a check drops its sender from the round (the reason
is kept); fewer than t survivors in any round aborts the session with the reason.
It asks for and keeps at most one kind of share per member: never both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from bridgestat.common import secagg as sa
from bridgestat.common.secagg import SecAggError, SecAggParams


class Addressed(Protocol):
    """Encrypted shares as the coordinator routes them: it reads only who sent them to whom
    (`sa.EncryptedShares`, or the protobuf message itself, relayed without a copy)."""

    @property
    def sender(self) -> str: ...

    @property
    def recipient(self) -> str: ...


Shares = TypeVar("Shares", bound=Addressed)


@dataclass(frozen=True)
class SessionOutcome:
    """The unmasked network sum and who took part (U3), with the members dropped per round."""

    total: tuple[int, ...]
    survivors: tuple[str, ...]
    dropped: Mapping[str, tuple[str, ...]]
    refused: Mapping[str, str] = field(default_factory=dict)


class SecAggServer:
    """The coordinator in one session; call the `collect_*` methods in round order with
    the messages that arrived (members that sent nothing have dropped out)."""

    def __init__(self, params: SecAggParams, ca: x509.Certificate) -> None:
        self.params, self._ca = params, ca
        self._adverts: dict[str, sa.Advertisement] = {}
        self._keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self._u2: frozenset[str] = frozenset()
        self._masked: dict[str, np.ndarray[Any, np.dtype[np.uint64]]] = {}
        self._u4: dict[str, sa.ConsistencySignature] = {}
        self.self_mask_points: dict[str, list[tuple[int, int]]] = {}
        self.key_points: dict[str, list[tuple[int, int]]] = {}
        self.refused: dict[str, str] = {}
        self.dropped: dict[str, tuple[str, ...]] = {}

    def collect_advertisements(self, adverts: Sequence[sa.Advertisement]
                               ) -> list[sa.Advertisement]:
        """Round 0: keep the well-signed advertisements of invited members (U1); what to
        send every member of U1."""
        for ad in adverts:
            try:
                self._check_advert(ad)
            except SecAggError as exc:
                self.refused.setdefault(ad.member, str(exc))
        self._require(sa.ADVERTISE, self._adverts, self.params.members)
        return [self._adverts[m] for m in sorted(self._adverts)]

    def collect_shares(self, messages: Mapping[str, Sequence[Shares]]
                       ) -> dict[str, list[Shares]]:
        """Round 1: each sender's encrypted shares, one for every other member of U1; what to
        forward to each member of U2 (the ciphertexts addressed to it)."""
        u1 = frozenset(self._adverts)
        good = {}
        for sender, batch in messages.items():
            recipients = sorted(e.recipient for e in batch)
            if sender not in u1 or any(e.sender != sender for e in batch):
                self.refused.setdefault(sender, "share-keys: sender mismatch")
            elif recipients != sorted(u1 - {sender}):
                self.refused.setdefault(sender, "share-keys: not one share for each member")
            else:
                good[sender] = batch
        self._u2 = self._require(sa.SHARE_KEYS, good, u1)
        # one pass over the K^2 ciphertexts (not one per recipient: K^3), senders in order
        forward: dict[str, list[Shares]] = {v: [] for v in sorted(self._u2)}
        for u in sorted(self._u2):
            for e in good[u]:
                if e.recipient in forward:
                    forward[e.recipient].append(e)
        return forward

    def collect_masked(self, inputs: Sequence[sa.MaskedInput]) -> tuple[str, ...]:
        """Round 2: the masked vectors of U2 members; returns U3 (to announce to each)."""
        for m in inputs:
            if m.member not in self._u2 or m.member in self._masked:
                self.refused.setdefault(m.member, "masked-input: not expected")
                continue
            try:
                self._masked[m.member] = sa.vector_from_bytes(
                    m.vector, self.params.dim, f"masked-input of {m.member}")
            except SecAggError as exc:
                self.refused.setdefault(m.member, str(exc))
        u3 = self._require(sa.MASKED_INPUT, self._masked, self._u2)
        return tuple(sorted(u3))

    def collect_consistency(self, signatures: Sequence[sa.ConsistencySignature]
                            ) -> sa.UnmaskRequest:
        """Round 3: keep signatures over U3 (U4); the unmask request for every member of U4:
        self-mask shares of U3, key shares of U2 minus U3."""
        u3 = frozenset(self._masked)
        for s in signatures:
            try:
                if s.member not in u3 or s.member in self._u4:
                    raise SecAggError(f"consistency: {s.member} not expected")
                sa.verify(self._keys[s.member], s.signature,
                          sa.consistency_payload(self.params.session, s.member, u3),
                          f"consistency signature of {s.member}")
                self._u4[s.member] = s
            except SecAggError as exc:
                self.refused.setdefault(s.member, str(exc))
        self._require(sa.CONSISTENCY, self._u4, u3)
        return sa.UnmaskRequest(tuple(sorted(u3)), tuple(sorted(self._u2 - u3)),
                                tuple(self._u4[m] for m in sorted(self._u4)))

    def unmask_request_for(self, member: str, request: sa.UnmaskRequest) -> sa.UnmaskRequest:
        """What `member` is sent of the unmask request: its own signature and the first
        t - 1 others by name, t in all. Bonawitz et al. ask for a list of at least t, which
        each member verifies in full; it proceeds only on t valid signatures over its own
        U3, so two survivor sets cannot both pass when t > (K + c) / 2 (the default
        t = floor(2K/3) + 1 for c < K/3), however many are sent. More would cost each member
        a verification apiece (0.08 ms) and add no assurance."""
        own = [s for s in request.signatures if s.member == member]
        others = [s for s in request.signatures if s.member != member]
        shown = sorted([*own, *others[:self.params.threshold - len(own)]],
                       key=lambda s: s.member)
        return replace(request, signatures=tuple(shown))

    def collect_unmask(self, responses: Sequence[sa.UnmaskResponse]) -> SessionOutcome:
        """Round 4: store the shares (one kind per member), recover the masks from >= t
        shares each and return the network sum."""
        u3 = frozenset(self._masked)
        dropped = self._u2 - u3
        answered = {}
        for r in responses:
            try:
                self._check_response(r, u3, dropped)
                answered[r.member] = r
            except SecAggError as exc:
                self.refused.setdefault(r.member, str(exc))
        self._require(sa.UNMASK, answered, frozenset(self._u4))
        for r in answered.values():
            for owner, x, y in r.self_mask_shares:
                self.self_mask_points.setdefault(owner, []).append((x, y))
            for owner, x, y in r.key_shares:
                self.key_points.setdefault(owner, []).append((x, y))
        if set(self.self_mask_points) & set(self.key_points):  # by construction never
            raise SecAggError("unmask: both shares of one member were collected")
        total = self._unmasked_sum(u3, dropped)
        return SessionOutcome(sa.decode(total), tuple(sorted(u3)), dict(self.dropped),
                              dict(self.refused))

    # --- helpers -----------------------------------------------------------------------

    def _check_advert(self, ad: sa.Advertisement) -> None:
        if ad.member not in self.params.members or ad.member in self._adverts:
            raise SecAggError(f"advertise: {ad.member} not invited or sent twice")
        public = sa.member_key(self._ca, ad.certificate, ad.member)
        sa.x25519_public(ad.c_pk, f"advertisement of {ad.member}")
        sa.x25519_public(ad.s_pk, f"advertisement of {ad.member}")
        sa.verify(public, ad.signature, sa.advertise_payload(
            self.params.session, ad.member, ad.c_pk, ad.s_pk), f"advertisement of {ad.member}")
        self._adverts[ad.member] = ad
        self._keys[ad.member] = public

    def _check_response(self, r: sa.UnmaskResponse, u3: frozenset[str],
                        dropped: frozenset[str]) -> None:
        if r.member not in self._u4:
            raise SecAggError(f"unmask: {r.member} did not sign the survivor set")
        x = self.params.members.index(r.member) + 1
        b_owners = [o for o, _, _ in r.self_mask_shares]
        s_owners = [o for o, _, _ in r.key_shares]
        if sorted(b_owners) != sorted(u3) or sorted(s_owners) != sorted(dropped):
            raise SecAggError(f"unmask: {r.member} answered for other members than asked")
        if any(px != x or not 0 <= y < sa.SHAMIR_PRIME
               for _, px, y in (*r.self_mask_shares, *r.key_shares)):
            raise SecAggError(f"unmask: {r.member} sent malformed shares")

    def _unmasked_sum(self, u3: frozenset[str], dropped: frozenset[str]
                      ) -> np.ndarray[Any, np.dtype[np.uint64]]:
        dim, session, t = self.params.dim, self.params.session, self.params.threshold
        total = np.zeros(dim, dtype=np.uint64)
        for u in sorted(u3):
            total += self._masked[u]
            b = sa.recover_secret(self.self_mask_points[u], t, f"self-mask seed of {u}")
            total -= sa.prg(sa.self_mask_seed(session, b), dim)
        for v in sorted(dropped):
            raw = sa.recover_secret(self.key_points[v], t, f"mask key of {v}")
            s_sk = x25519.X25519PrivateKey.from_private_bytes(raw)
            if sa.public_bytes(s_sk) != self._adverts[v].s_pk:
                raise SecAggError(f"unmask: the shares of {v}'s mask key do not match its "
                                  "advertised key (a member sent false shares)")
            for u in sorted(u3):
                seed = sa.pair_seed(session, s_sk, sa.x25519_public(self._adverts[u].s_pk, u),
                                    v, u)
                mask = sa.prg(seed, dim)
                total = total - mask if u < v else total + mask  # u added +mask iff u < v
        return total

    def _require(self, step: str, got: Mapping[str, Any] | Sequence[str],
                    expected: Sequence[str] | frozenset[str]) -> frozenset[str]:
        have = frozenset(got)
        self.dropped[step] = tuple(sorted(frozenset(expected) - have))
        if len(have) < self.params.threshold:
            raise SecAggError(
                f"{step}: {len(have)} members took part, fewer than t = "
                f"{self.params.threshold}; the query aborts (dropped: "
                f"{', '.join(self.dropped[step]) or 'none'}; refused: "
                f"{'; '.join(f'{k}: {v}' for k, v in sorted(self.refused.items())) or 'none'})")
        return have
