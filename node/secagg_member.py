"""A member's side of one secure-aggregation session (protocol: `common/secagg.py`).

The member keeps its fresh keys, its self-mask seed and the shares it received, and moves
through the rounds in order: advertise -> share keys -> masked input -> consistency ->
unmask. Every call checks what the coordinator relayed and raises `SecAggError` (the member
then stays aborted) on: a peer certificate not issued by the CA or for another name, a bad
signature, fewer than t members, a survivor set that is not the one everybody signed, a
request for both the self-mask share and the key share of one member, a malformed message,
or a call out of order. The noise share is drawn with OpenDP's discrete Gaussian on integers.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, x25519

from bridgestat.common import opendp_core as dp
from bridgestat.common import secagg as sa
from bridgestat.common.secagg import SecAggError, SecAggParams

dp.enable_features("contrib")

_T = TypeVar("_T")

_ORDER = (sa.ADVERTISE, sa.SHARE_KEYS, sa.MASKED_INPUT, sa.CONSISTENCY, sa.UNMASK)


def noise_share(dim: int, sigma_share: float) -> tuple[int, ...]:
    """`dim` independent discrete Gaussian N_Z(0, sigma_share^2) draws (fixed-point units)
    from OpenDP's integer `make_gaussian`, applied to a zero vector."""
    return tuple(int(x) for x in _gaussian(sigma_share)([0] * dim))


@functools.lru_cache(maxsize=64)
def _gaussian(sigma_share: float) -> dp.Measurement:
    """OpenDP's vector discrete Gaussian at this scale, built once per scale (building it
    costs as much as drawing a mean's three values). A measurement holds no random state:
    each call draws fresh noise from OpenDP's sampler."""
    return dp.m.make_gaussian(dp.vector_domain(dp.atom_domain(T=dp.i64)),
                              dp.l2_distance(T=dp.i64), sigma_share)


def secure_input(values: Sequence[int], sigma_share: float
                 ) -> np.ndarray[Any, np.dtype[np.uint64]]:
    """A member's input vector: its fixed-point sums plus its noise share, mod 2^64."""
    noise = noise_share(len(values), sigma_share)
    return sa.encode([int(v) + n for v, n in zip(values, noise, strict=True)])


class SecAggMember:
    """One member in one session. `vector`: its input (fixed-point sums + noise share) as
    uint64, or None when the node computes it after U2 is known (`receive_shares`, charge,
    then `mask`); `signing_key`/`certificate`: its network-CA identity (DER certificate)."""

    def __init__(self, params: SecAggParams, name: str, signing_key: ec.EllipticCurvePrivateKey,
                 certificate: bytes, ca: x509.Certificate,
                 vector: np.ndarray[Any, np.dtype[np.uint64]] | None = None) -> None:
        if name not in params.members:
            raise SecAggError(f"member {name}: not among the session's members")
        if vector is not None and (vector.shape != (params.dim,) or vector.dtype != np.uint64):
            raise SecAggError(f"member {name}: the input must be {params.dim} uint64 values")
        self.params, self.name, self._ca = params, name, ca
        self._signing_key, self._certificate = signing_key, certificate
        self._vector = vector
        self._c_sk = x25519.X25519PrivateKey.generate()
        self._s_sk = x25519.X25519PrivateKey.generate()
        self._b = os.urandom(sa.SEED_BYTES)
        self._done = 0
        self._aborted: str | None = None
        self._peers: dict[str, sa.Advertisement] = {}
        self._peer_keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self._peer_x25519: dict[str, tuple[x25519.X25519PublicKey,
                                           x25519.X25519PublicKey]] = {}
        self._received: dict[str, tuple[int, int]] = {}
        self._u2: frozenset[str] = frozenset()
        self._u3: frozenset[str] = frozenset()
        self._revealed_b: set[str] = set()
        self._revealed_s: set[str] = set()
        self._transport: dict[str, bytes] = {}
        self._masked = False
        self._advert: sa.Advertisement | None = None  # as signed here (round 0)
        self._signature: sa.ConsistencySignature | None = None  # as signed here (round 3)

    @property
    def aborted(self) -> str | None:
        """Why this member aborted the session, or None."""
        return self._aborted

    @property
    def survivors(self) -> frozenset[str]:
        """U2: the members whose masks are in this member's masked input (its replay key)."""
        return self._u2

    def advertise(self) -> sa.Advertisement:
        """Round 0: the two fresh public keys, signed."""
        self._enter(sa.ADVERTISE)
        c_pk, s_pk = sa.public_bytes(self._c_sk), sa.public_bytes(self._s_sk)
        payload = sa.advertise_payload(self.params.session, self.name, c_pk, s_pk)
        self._advert = sa.Advertisement(self.name, c_pk, s_pk,
                                        sa.sign(self._signing_key, payload), self._certificate)
        return self._advert

    def share_keys(self, adverts: Sequence[sa.Advertisement]) -> list[sa.EncryptedShares]:
        """Round 1: check every advertisement, then send each peer its encrypted shares."""
        self._enter(sa.SHARE_KEYS)
        return self._guard(lambda: self._share_keys(adverts))

    def masked_input(self, shares: Sequence[sa.EncryptedShares]) -> sa.MaskedInput:
        """Round 2: decrypt the shares addressed here; U2 = their senders and this member."""
        self.receive_shares(shares)
        return self.mask(self._vector)

    def receive_shares(self, shares: Sequence[sa.EncryptedShares]) -> frozenset[str]:
        """Round 2, first half: check and decrypt the shares; returns U2 (the replay key of
        the masked input, which the node charges before calling `mask`)."""
        self._enter(sa.MASKED_INPUT)
        return self._guard(lambda: self._receive_shares(shares))

    def mask(self, vector: np.ndarray[Any, np.dtype[np.uint64]] | None) -> sa.MaskedInput:
        """Round 2, second half: y = vector + masks. Only once, after `receive_shares`."""
        if self._masked or not self._u2 or self._done != _ORDER.index(sa.CONSISTENCY):
            self._aborted = self._aborted or "mask called out of order"
            raise SecAggError(f"masked-input at {self.name}: mask called out of order")
        if vector is None or vector.shape != (self.params.dim,) or vector.dtype != np.uint64:
            raise SecAggError(f"member {self.name}: the input must be {self.params.dim} "
                              "uint64 values")
        self._masked = True
        return self._guard(lambda: self._mask(vector))

    def consistency(self, survivors: Sequence[str]) -> sa.ConsistencySignature:
        """Round 3: sign the survivor set U3 the coordinator announces."""
        self._enter(sa.CONSISTENCY)
        return self._guard(lambda: self._consistency(survivors))

    def unmask(self, request: sa.UnmaskRequest) -> sa.UnmaskResponse:
        """Round 4: check everyone signed this member's U3, then reveal b shares of
        survivors and s shares of dropped members, never both for one member."""
        self._enter(sa.UNMASK)
        return self._guard(lambda: self._unmask(request))

    # --- rounds ------------------------------------------------------------------------

    def _share_keys(self, adverts: Sequence[sa.Advertisement]) -> list[sa.EncryptedShares]:
        for ad in adverts:
            self._check_advert(ad)
        u1 = sa.check_survivors("share-keys", self.name, [a.member for a in adverts],
                                self.params.members, self.params.threshold)
        mine = self._peers[self.name]
        if (mine.c_pk, mine.s_pk) != (sa.public_bytes(self._c_sk), sa.public_bytes(self._s_sk)):
            raise SecAggError(f"share-keys at {self.name}: its own keys were replaced")
        keys = [k for a in adverts for k in (a.c_pk, a.s_pk)]
        if len(set(keys)) != len(keys):
            raise SecAggError(f"share-keys at {self.name}: two advertised keys are equal")
        rows = sa.share_secrets([self._s_sk.private_bytes_raw(), self._b],
                                self.params.threshold, len(self.params.members))
        out = []
        for v in sorted(u1):
            s_share, b_share = rows[self._x(v) - 1]
            if v == self.name:
                self._received[v] = (s_share, b_share)
                continue
            key = self._transport_key(v)
            nonce = os.urandom(sa.NONCE_BYTES)
            sealed = sa.seal(key, nonce, sa.pack_shares(s_share, b_share),
                             sa.share_aad(self.params.session, self.name, v))
            out.append(sa.EncryptedShares(self.name, v, nonce, sealed))
        return out

    def _check_advert(self, ad: sa.Advertisement) -> None:
        what = f"share-keys at {self.name}: advertisement of {ad.member}"
        if ad.member in self._peers:
            raise SecAggError(f"{what}: sent twice")
        if ad.member not in self.params.members:
            raise SecAggError(f"{what}: not a member of this session")
        # Its own advertisement must come back byte for byte as it signed it: stronger than
        # verifying its signature (which it made), and one ECDSA verify fewer.
        if ad.member == self.name and ad != self._advert:
            raise SecAggError(f"{what}: its own advertisement was altered")
        public = sa.member_key(self._ca, ad.certificate, ad.member)
        c_pk = sa.x25519_public(ad.c_pk, what)
        s_pk = sa.x25519_public(ad.s_pk, what)
        if ad.member != self.name:
            sa.verify(public, ad.signature, sa.advertise_payload(
                self.params.session, ad.member, ad.c_pk, ad.s_pk), what)
        self._peers[ad.member] = ad
        self._peer_keys[ad.member] = public
        self._peer_x25519[ad.member] = (c_pk, s_pk)  # parsed once, used in two rounds

    def _receive_shares(self, shares: Sequence[sa.EncryptedShares]) -> frozenset[str]:
        senders = [e.sender for e in shares]
        if self.name in senders:
            raise SecAggError(f"masked-input at {self.name}: shares claim to come from itself")
        u2 = sa.check_survivors("masked-input", self.name, [*senders, self.name],
                                self._peers, self.params.threshold)
        for e in shares:
            self._receive(e)
        self._u2 = u2
        return u2

    def _mask(self, vector: np.ndarray[Any, np.dtype[np.uint64]]) -> sa.MaskedInput:
        y = vector + sa.prg(sa.self_mask_seed(self.params.session, self._b),
                                  self.params.dim)
        for v in sorted(self._u2 - {self.name}):
            seed = sa.pair_seed(self.params.session, self._s_sk, self._peer_x25519[v][1],
                                self.name, v)
            mask = sa.prg(seed, self.params.dim)
            y = y + mask if self.name < v else y - mask  # uint64 wraps: arithmetic mod 2^64
        return sa.MaskedInput(self.name, sa.vector_bytes(y))

    def _receive(self, e: sa.EncryptedShares) -> None:
        what = f"masked-input at {self.name}: shares from {e.sender}"
        if e.recipient != self.name:
            raise SecAggError(f"{what}: addressed to {e.recipient}")
        if len(e.nonce) != sa.NONCE_BYTES:
            raise SecAggError(f"{what}: the nonce has {len(e.nonce)} bytes, not 12")
        key = self._transport_key(e.sender)
        plain = sa.open_sealed(key, e.nonce, e.ciphertext,
                               sa.share_aad(self.params.session, e.sender, self.name), what)
        self._received[e.sender] = sa.unpack_shares(plain, what)

    def _transport_key(self, peer: str) -> bytes:
        """The AES-GCM key shared with `peer` (agreed once, used both ways)."""
        if peer not in self._transport:
            self._transport[peer] = sa.transport_key(
                self.params.session, self._c_sk, self._peer_x25519[peer][0], self.name, peer)
        return self._transport[peer]

    def _consistency(self, survivors: Sequence[str]) -> sa.ConsistencySignature:
        self._u3 = sa.check_survivors("consistency", self.name, survivors, self._u2,
                                      self.params.threshold)
        payload = sa.consistency_payload(self.params.session, self.name, self._u3)
        self._signature = sa.ConsistencySignature(self.name, sa.sign(self._signing_key, payload))
        return self._signature

    def _unmask(self, request: sa.UnmaskRequest) -> sa.UnmaskResponse:
        where = f"unmask at {self.name}"
        both = set(request.survivors) & set(request.dropped)
        if both:
            raise SecAggError(f"{where}: refused: both the self-mask share and the key share "
                              f"of {sorted(both)} were requested")
        if frozenset(request.survivors) != self._u3 or len(request.survivors) != len(self._u3):
            raise SecAggError(f"{where}: the survivor set differs from the one this member "
                              "signed; the coordinator announced inconsistent sets")
        if frozenset(request.dropped) != self._u2 - self._u3:
            raise SecAggError(f"{where}: the dropped set is not U2 minus U3")
        self._check_signatures(request.signatures)
        b_owners, s_owners = sorted(self._u3), sorted(request.dropped)
        if (self._revealed_s | set(s_owners)) & (self._revealed_b | set(b_owners)):
            raise SecAggError(f"{where}: refused: would reveal both shares of one member")
        self._revealed_b.update(b_owners)
        self._revealed_s.update(s_owners)
        x = self._x(self.name)
        return sa.UnmaskResponse(
            self.name,
            tuple((v, x, self._received[v][1]) for v in b_owners),
            tuple((v, x, self._received[v][0]) for v in s_owners))

    def _check_signatures(self, signatures: Sequence[sa.ConsistencySignature]) -> None:
        where = f"unmask at {self.name}"
        signers = [s.member for s in signatures]
        sa.check_survivors("unmask", self.name, signers, self._u3, self.params.threshold)
        for s in signatures:
            if s.member == self.name:  # its own, byte for byte as signed over its U3
                if s != self._signature:
                    raise SecAggError(f"{where}: its own signature over the survivor set was "
                                      "altered")
                continue
            payload = sa.consistency_payload(self.params.session, s.member, self._u3)
            sa.verify(self._peer_keys[s.member], s.signature, payload,
                      f"{where}: {s.member}'s signature over the survivor set (a different "
                      "set was announced to it, or the signature is forged)")

    # --- bookkeeping -------------------------------------------------------------------

    def _x(self, member: str) -> int:
        """A member's Shamir x-coordinate: its 1-based place in the session's member list."""
        return self.params.members.index(member) + 1

    def _enter(self, step: str) -> None:
        if self._aborted is not None:
            raise SecAggError(f"{step} at {self.name}: the session was aborted: "
                              f"{self._aborted}")
        expected = _ORDER[self._done] if self._done < len(_ORDER) else "nothing"
        if step != expected:
            self._aborted = f"{step} called out of order (expected {expected})"
            raise SecAggError(f"{step} at {self.name}: {self._aborted}")
        self._done += 1

    def _guard(self, step: Callable[[], _T]) -> _T:
        try:
            result = step()
        except SecAggError as exc:
            self._aborted = str(exc)
            raise
        except (ValueError, KeyError, TypeError) as exc:
            self._aborted = f"malformed message: {exc!r}"
            raise SecAggError(f"{self.name}: {self._aborted}") from exc
        return result
