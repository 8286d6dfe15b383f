"""Secure aggregation: what members and the coordinator must agree on.

The protocol is Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
Learning", CCS 2017, in its active-adversary form (signed keys, a consistency round). Every
message goes through the coordinator. Per session (one query):

0. advertise: each member sends two fresh X25519 public keys (c: share transport, s: masks),
   signed with its network-CA key, and its certificate;
1. share keys: each member Shamir-shares its s private key and a fresh 32-byte self-mask seed
   b with threshold t among the advertisers U1, and sends each share pair AES-GCM-encrypted
   under a key agreed from the c keys;
2. masked input: y_u = x_u + PRG(b_u) + sum_{v in U2, v != u} (+-) PRG(s_uv) mod 2^64, the sign
   + when u < v, so the pairwise masks cancel in the sum;
3. consistency: each member signs the survivor set U3 the coordinator announces to it and
   checks everyone's signature over its own U3: a coordinator that announces different sets
   to different members makes honest members abort;
4. unmask: each member reveals the s share of every dropped member (U2 minus U3) and the b
   share of every survivor, never both for the same member.

Primitives (all from `cryptography`, Shamir from `mpyc.thresha`; none written here):
X25519, HKDF-SHA256, ChaCha20 as the PRG, AES-256-GCM, ECDSA P-256/SHA-256 signatures.
Every signed or derived byte string starts with a domain label and is length-framed with the
session id, round and member names, so no signature or key is valid in another context.

Shamir sharing runs over the prime field GF(2^521 - 1) (a Mersenne prime, > 2^256), so one
32-byte secret is one field element; a share is 66 bytes.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import logging
import math
import struct
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.x509.oid import NameOID

from bridgestat.common.names import is_name

MODULUS = 1 << 64
HALF = 1 << 63
SUM_SCALE = 1 << 20  # fixed-point unit of sums, means, paired changes, cross products
COUNT_SCALE = 1 << 10  # counts and histogram bins are multiplied by this before sharing
SHAMIR_PRIME = (1 << 521) - 1
SHARE_BYTES = 66  # ceil(521 / 8)
SEED_BYTES = 32
PUBLIC_KEY_BYTES = 32
NONCE_BYTES = 12
MAX_DIM = 1 << 16
DOMAIN = b"bridgestat-secagg-v1"
ADVERTISE, SHARE_KEYS, MASKED_INPUT, CONSISTENCY, UNMASK = (
    "advertise", "share-keys", "masked-input", "consistency", "unmask")


class SecAggError(ValueError):
    """A refusal or abort in secure aggregation; the message names the round, member and why."""


@dataclass(frozen=True)
class SecAggParams:
    """One session's public parameters, the same at every party.

    members: the network's members invited (names, sorted); threshold: t, the fewest members
    that must survive each round; colluding: c, the members assumed to collude with the
    coordinator (c >= 1 whenever members see results: a member can subtract its own share).
    dim: the length of the input vector.
    """

    session: str
    members: tuple[str, ...]
    threshold: int
    colluding: int
    dim: int

    def __post_init__(self) -> None:
        problems = _param_problems(self)
        if problems:
            raise SecAggError("secure aggregation parameters: " + "; ".join(problems))

    @property
    def honest(self) -> int:
        """H = t - c: the fewest honest members whose noise shares are in any sum."""
        return self.threshold - self.colluding


def _param_problems(p: SecAggParams) -> list[str]:
    out: list[str] = []
    if not (8 <= len(p.session) <= 128 and p.session.isascii() and p.session.isprintable()):
        out.append("session: 8 to 128 printable ASCII characters")
    if list(p.members) != sorted(set(p.members)):
        out.append("members: must be sorted and distinct")
    out += [f"members: {m!r} is not a member name" for m in p.members if not is_name(m)]
    k = len(p.members)
    if not (k // 2 < p.threshold <= k):
        out.append(f"threshold: t = {p.threshold} must satisfy K/2 < t <= K (K = {k})")
    if not (0 <= p.colluding < p.threshold):
        out.append(f"colluding: c = {p.colluding} must satisfy 0 <= c < t = {p.threshold}")
    if not (1 <= p.dim <= MAX_DIM):
        out.append(f"dim: {p.dim} must be in 1..{MAX_DIM}")
    return out


def default_threshold(k: int) -> int:
    """t = floor(2K/3) + 1: Bonawitz et al.'s bound against an active coordinator."""
    return (2 * k) // 3 + 1


def default_colluding(k: int, members_see_results: bool = True) -> int:
    """c = 1 when members see the published figure (each can subtract its own share)."""
    return 1 if members_see_results and k >= 2 else 0


# --- framing, signatures, certificates -------------------------------------------------

def frame(*parts: bytes | str | int) -> bytes:
    """Domain label then each part length-prefixed (str as UTF-8, int as 8 bytes)."""
    return DOMAIN + b"".join([_framed_str(part) if type(part) is str else _framed(part)
                              for part in parts])


@functools.lru_cache(maxsize=4096)
def _framed_str(part: str) -> bytes:
    """A str part framed, remembered: member names, round labels and a session's id recur
    in every payload and key label of a session (some 140 frames per member)."""
    raw = part.encode()
    return _U32.pack(len(raw)) + raw


def _framed(part: bytes | str | int) -> bytes:
    if isinstance(part, str):  # a str subclass
        return _framed_str(str(part))
    raw = _U64.pack(part) if isinstance(part, int) else bytes(part)
    return _U32.pack(len(raw)) + raw


_U32, _U64 = struct.Struct(">I"), struct.Struct(">Q")


def names_bytes(names: Iterable[str]) -> bytes:
    """A set of member names as signed: sorted, each framed."""
    return _names_bytes(tuple(sorted(names)))


@functools.lru_cache(maxsize=256)
def _names_bytes(ordered: tuple[str, ...]) -> bytes:
    """Remembered: a member checks t or more signatures over the same survivor set."""
    return frame(*ordered)


def advertise_payload(session: str, member: str, c_pk: bytes, s_pk: bytes) -> bytes:
    return frame(session, ADVERTISE, member, c_pk, s_pk)


def consistency_payload(session: str, member: str, survivors: Iterable[str]) -> bytes:
    return frame(session, CONSISTENCY, member, names_bytes(survivors))


def sign(key: ec.EllipticCurvePrivateKey, payload: bytes) -> bytes:
    return key.sign(payload, ec.ECDSA(hashes.SHA256()))


def verify(public: ec.EllipticCurvePublicKey, signature: bytes, payload: bytes,
           what: str) -> None:
    try:
        public.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise SecAggError(f"{what}: the signature is invalid") from exc


def member_key(ca: x509.Certificate, cert_der: bytes, name: str,
               now: dt.datetime | None = None) -> ec.EllipticCurvePublicKey:
    """The EC public key of `name`'s certificate after checking it: parseable DER, issued
    (signed) by the network CA, valid now, its common name is `name`. The signature check
    is remembered per (CA, certificate, name), since certificates outlive sessions; the
    validity period is checked on every call."""
    public, start, end = _checked_certificate(ca, cert_der, name)
    moment = now or dt.datetime.now(dt.UTC)
    if not start <= moment <= end:
        raise SecAggError(f"certificate of {name}: not valid now")
    return public


def forget_certificates() -> None:
    """Drop the remembered certificate checks (a new CA, or to measure a cold start)."""
    _checked_certificate.cache_clear()


@functools.lru_cache(maxsize=4096)
def _checked_certificate(ca: x509.Certificate, cert_der: bytes, name: str
                         ) -> tuple[ec.EllipticCurvePublicKey, dt.datetime, dt.datetime]:
    try:
        cert = x509.load_der_x509_certificate(cert_der)
    except ValueError as exc:
        raise SecAggError(f"certificate of {name}: not a DER certificate") from exc
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise SecAggError(f"certificate of {name}: not issued by the network CA") from exc
    names = [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [name]:
        raise SecAggError(f"certificate of {name}: issued for {names}, not for {name}")
    public = cert.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise SecAggError(f"certificate of {name}: not an EC key")
    return public, cert.not_valid_before_utc, cert.not_valid_after_utc


# --- key agreement, derivation, PRG, share transport -----------------------------------

def x25519_public(raw: bytes, what: str) -> x25519.X25519PublicKey:
    if len(raw) != PUBLIC_KEY_BYTES:
        raise SecAggError(f"{what}: an X25519 public key has 32 bytes, got {len(raw)}")
    return x25519.X25519PublicKey.from_public_bytes(raw)


def public_bytes(key: x25519.X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


def derive(secret: bytes, info: bytes) -> bytes:
    """32 bytes from an agreed secret by HKDF-SHA256 with a framed `info` label."""
    return HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=None, info=info).derive(secret)


def agree(private: x25519.X25519PrivateKey, public: x25519.X25519PublicKey, what: str) -> bytes:
    try:
        return private.exchange(public)
    except ValueError as exc:  # an all-zero shared secret: a small-order public key
        raise SecAggError(f"{what}: key agreement failed (degenerate public key)") from exc


def pair_seed(session: str, s_private: x25519.X25519PrivateKey,
              s_public: x25519.X25519PublicKey, u: str, v: str) -> bytes:
    """The pairwise mask seed of members u and v (the same at both ends)."""
    low, high = sorted((u, v))
    secret = agree(s_private, s_public, f"mask seed {low}/{high}")
    return derive(secret, frame(session, "pair-mask", low, high))


def transport_key(session: str, c_private: x25519.X25519PrivateKey,
                  c_public: x25519.X25519PublicKey, u: str, v: str) -> bytes:
    low, high = sorted((u, v))
    secret = agree(c_private, c_public, f"transport key {low}/{high}")
    return derive(secret, frame(session, "share-transport", low, high))


def self_mask_seed(session: str, b: bytes) -> bytes:
    return derive(b, frame(session, "self-mask"))


def prg(seed: bytes, dim: int) -> np.ndarray[Any, np.dtype[np.uint64]]:
    """`dim` uint64 values from a 32-byte seed: the ChaCha20 key stream, little-endian."""
    if len(seed) != SEED_BYTES:
        raise SecAggError(f"PRG seed: 32 bytes needed, got {len(seed)}")
    encryptor = Cipher(algorithms.ChaCha20(seed, b"\x00" * 16), mode=None).encryptor()
    stream = encryptor.update(b"\x00" * (8 * dim))
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64)


def seal(key: bytes, nonce: bytes, plaintext: bytes, aad: bytes) -> bytes:
    return AESGCM(key).encrypt(nonce, plaintext, aad)


def open_sealed(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes, what: str) -> bytes:
    try:
        return AESGCM(key).decrypt(nonce, ciphertext, aad)
    except (InvalidTag, ValueError) as exc:
        raise SecAggError(f"{what}: the encrypted shares do not decrypt (garbage or "
                          "tampered)") from exc


def share_aad(session: str, sender: str, recipient: str) -> bytes:
    return frame(session, SHARE_KEYS, sender, recipient)


def pack_shares(s_share: int, b_share: int) -> bytes:
    return s_share.to_bytes(SHARE_BYTES, "big") + b_share.to_bytes(SHARE_BYTES, "big")


def unpack_shares(raw: bytes, what: str) -> tuple[int, int]:
    if len(raw) != 2 * SHARE_BYTES:
        raise SecAggError(f"{what}: a share pair has {2 * SHARE_BYTES} bytes, got {len(raw)}")
    s, b = int.from_bytes(raw[:SHARE_BYTES], "big"), int.from_bytes(raw[SHARE_BYTES:], "big")
    if s >= SHAMIR_PRIME or b >= SHAMIR_PRIME:
        raise SecAggError(f"{what}: a share is not a field element")
    return s, b


# --- Shamir sharing (mpyc.thresha) -----------------------------------------------------

def share_secrets(secrets: Sequence[bytes], threshold: int, holders: int
                  ) -> list[list[int]]:
    """Shamir shares of 32-byte secrets: row i (holder i + 1, x = i + 1) holds one share of
    each secret; any `threshold` rows recover them (polynomial degree threshold - 1)."""
    thresha, field = _mpyc()
    values = [field(int.from_bytes(s, "big")) for s in secrets]
    rows = thresha.random_split(field, values, threshold - 1, holders)
    return [[int(x) for x in row] for row in rows]


def recover_secret(points: Sequence[tuple[int, int]], threshold: int, what: str) -> bytes:
    """The 32-byte secret from >= `threshold` (x, share) points."""
    if len(points) < threshold:
        raise SecAggError(f"{what}: {len(points)} shares, {threshold} needed")
    if len({x for x, _ in points}) != len(points):
        raise SecAggError(f"{what}: two shares have the same x-coordinate")
    ordered = sorted(points)
    value = _recombine(ordered[:threshold])
    if len(ordered) > threshold and _recombine(ordered[-threshold:]) != value:
        raise SecAggError(f"{what}: the shares are inconsistent (a member sent false shares)")
    if value >= 1 << (8 * SEED_BYTES):
        raise SecAggError(f"{what}: the shares do not recombine to a 32-byte secret")
    return value.to_bytes(SEED_BYTES, "big")


def _recombine(points: Sequence[tuple[int, int]]) -> int:
    thresha, field = _mpyc()
    return int(thresha.recombine(field, [(x, [y]) for x, y in points])[0]) % SHAMIR_PRIME


_MPYC: tuple[Any, Any] | None = None


def _mpyc() -> tuple[Any, Any]:
    """mpyc's thresha and GF(2^521 - 1), imported once. mpyc's package import parses
    sys.argv and calls logging.basicConfig; both are shielded so it reads no host options
    and leaves the root logger as it found it."""
    global _MPYC
    if _MPYC is None:
        root = logging.getLogger()
        handlers, level, argv = list(root.handlers), root.level, sys.argv
        sys.argv = [argv[0] if argv else "bridgestat", "--no-log"]
        try:
            from mpyc import thresha
            from mpyc.finfields import GF
        finally:
            sys.argv = argv
            root.handlers[:] = handlers
            root.setLevel(level)
        _MPYC = (thresha, GF(SHAMIR_PRIME))
    return _MPYC


# --- fixed point mod 2^64 --------------------------------------------------------------

def encode(values: Sequence[int]) -> np.ndarray[Any, np.dtype[np.uint64]]:
    """Signed integers as uint64 mod 2^64 (two's complement); refuses |value| >= 2^63."""
    for i, v in enumerate(values):
        if not -HALF <= int(v) < HALF:
            raise SecAggError(f"input[{i}]: {v} does not fit in a signed 64-bit sum")
    return np.array([int(v) % MODULUS for v in values], dtype=np.uint64)


def decode(vector: np.ndarray[Any, np.dtype[np.uint64]]) -> tuple[int, ...]:
    """uint64 mod 2^64 back to signed integers (values >= 2^63 are negative)."""
    return tuple(int(v) - MODULUS if int(v) >= HALF else int(v) for v in vector)


def vector_bytes(vector: np.ndarray[Any, np.dtype[np.uint64]]) -> bytes:
    return vector.astype("<u8").tobytes()


def vector_from_bytes(raw: bytes, dim: int, what: str) -> np.ndarray[Any, np.dtype[np.uint64]]:
    if len(raw) != 8 * dim:
        raise SecAggError(f"{what}: a masked vector of {dim} values has {8 * dim} bytes, "
                          f"got {len(raw)}")
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64)


def headroom_bits(members: int, sum_bound: int) -> float:
    """Bits left in a signed 64-bit sum of `members` values of magnitude <= `sum_bound`."""
    return 63.0 - math.log2(max(1, members * sum_bound))


# --- messages --------------------------------------------------------------------------

@dataclass(frozen=True)
class Advertisement:
    """Round 0, member -> all: fresh public keys, signed; the member's certificate (DER)."""

    member: str
    c_pk: bytes
    s_pk: bytes
    signature: bytes
    certificate: bytes


@dataclass(frozen=True)
class EncryptedShares:
    """Round 1, sender -> recipient (via the coordinator): AES-GCM(s share, b share)."""

    sender: str
    recipient: str
    nonce: bytes
    ciphertext: bytes


@dataclass(frozen=True)
class MaskedInput:
    """Round 2, member -> coordinator: y_u as little-endian uint64 bytes."""

    member: str
    vector: bytes


@dataclass(frozen=True)
class ConsistencySignature:
    """Round 3, member -> all: its signature over the survivor set U3 it was announced."""

    member: str
    signature: bytes


@dataclass(frozen=True)
class UnmaskRequest:
    """Round 4, coordinator -> member: whose b shares (survivors) and s shares (dropped)."""

    survivors: tuple[str, ...]
    dropped: tuple[str, ...]
    signatures: tuple[ConsistencySignature, ...]


@dataclass(frozen=True)
class UnmaskResponse:
    """Round 4, member -> coordinator: b shares of survivors, s shares of dropped members,
    each as (owner, x, share)."""

    member: str
    self_mask_shares: tuple[tuple[str, int, int], ...]
    key_shares: tuple[tuple[str, int, int], ...]


def masked_input_key(session: str, survivors: Iterable[str]) -> str:
    """What a stored masked input may be replayed for: the session and its U2 (the masks in
    it). A retry for another session or survivor set is a new input: new noise, new masks."""
    return hashlib.sha256(frame(session, MASKED_INPUT, names_bytes(survivors))).hexdigest()


def check_survivors(round_name: str, me: str, announced: Sequence[str],
                    previous: Iterable[str], threshold: int) -> frozenset[str]:
    """A survivor set the coordinator announces: distinct, within the previous round's set,
    including me, at least t members."""
    got = frozenset(announced)
    if len(got) != len(announced):
        raise SecAggError(f"{round_name} at {me}: the survivor set repeats a member")
    if not got <= frozenset(previous):
        extra = sorted(got - frozenset(previous))
        raise SecAggError(f"{round_name} at {me}: survivors {extra} were not in the "
                          "previous round")
    if me not in got:
        raise SecAggError(f"{round_name} at {me}: this member is not among the survivors")
    if len(got) < threshold:
        raise SecAggError(f"{round_name} at {me}: {len(got)} survivors, fewer than "
                          f"t = {threshold}; the query aborts")
    return got
