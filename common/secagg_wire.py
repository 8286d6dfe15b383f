"""The secure-aggregation messages of `common/secagg.py` to and from their protobuf form
(`bridgestat/v1/secure_aggregation.proto`), for the node and the coordinator alike.

Decoding checks only the shape (field sizes, share lengths); the protocol's checks are the
member's and the coordinator's (`secagg_member`, `secagg_server`).
"""

from __future__ import annotations

from collections.abc import Iterable

from bridgestat.common import secagg as sa
from bridgestat.common.secagg import SecAggError
from bridgestat.v1 import secure_aggregation_pb2 as spb


def advert_to_pb(a: sa.Advertisement) -> spb.Advertisement:
    return spb.Advertisement(member=a.member, c_pk=a.c_pk, s_pk=a.s_pk, signature=a.signature,
                             certificate=a.certificate)


def advert_from_pb(m: spb.Advertisement) -> sa.Advertisement:
    return sa.Advertisement(m.member, bytes(m.c_pk), bytes(m.s_pk), bytes(m.signature),
                            bytes(m.certificate))


def shares_to_pb(items: Iterable[sa.EncryptedShares]) -> list[spb.EncryptedShares]:
    return [spb.EncryptedShares(sender=e.sender, recipient=e.recipient, nonce=e.nonce,
                                ciphertext=e.ciphertext) for e in items]


def shares_from_pb(items: Iterable[spb.EncryptedShares]) -> list[sa.EncryptedShares]:
    return [sa.EncryptedShares(e.sender, e.recipient, bytes(e.nonce), bytes(e.ciphertext))
            for e in items]


def signature_to_pb(s: sa.ConsistencySignature) -> spb.ConsistencySignature:
    return spb.ConsistencySignature(member=s.member, signature=s.signature)


def signature_from_pb(m: spb.ConsistencySignature) -> sa.ConsistencySignature:
    return sa.ConsistencySignature(m.member, bytes(m.signature))


def unmask_request_to_pb(session: str, r: sa.UnmaskRequest) -> spb.UnmaskRequest:
    return spb.UnmaskRequest(session=session, survivors=list(r.survivors),
                             dropped=list(r.dropped),
                             signatures=[signature_to_pb(s) for s in r.signatures])


def unmask_request_from_pb(m: spb.UnmaskRequest) -> sa.UnmaskRequest:
    return sa.UnmaskRequest(tuple(m.survivors), tuple(m.dropped),
                            tuple(signature_from_pb(s) for s in m.signatures))


def _share_to_pb(owner: str, x: int, y: int) -> spb.MemberShare:
    return spb.MemberShare(owner=owner, x=x, share=y.to_bytes(sa.SHARE_BYTES, "big"))


def _share_from_pb(m: spb.MemberShare) -> tuple[str, int, int]:
    if len(m.share) != sa.SHARE_BYTES:
        raise SecAggError(f"unmask: a share of {m.owner} has {len(m.share)} bytes, not "
                          f"{sa.SHARE_BYTES}")
    return m.owner, int(m.x), int.from_bytes(m.share, "big")


def unmask_response_to_pb(r: sa.UnmaskResponse) -> spb.UnmaskResponse:
    return spb.UnmaskResponse(member=r.member,
                              self_mask_shares=[_share_to_pb(*s) for s in r.self_mask_shares],
                              key_shares=[_share_to_pb(*s) for s in r.key_shares])


def unmask_response_from_pb(m: spb.UnmaskResponse) -> sa.UnmaskResponse:
    return sa.UnmaskResponse(m.member, tuple(_share_from_pb(s) for s in m.self_mask_shares),
                             tuple(_share_from_pb(s) for s in m.key_shares))
