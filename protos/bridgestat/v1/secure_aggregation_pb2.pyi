from bridgestat.v1 import node_service_pb2 as _node_service_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SessionRequest(_message.Message):
    __slots__ = ("advertise", "share_keys", "masked_input", "consistency", "unmask")
    ADVERTISE_FIELD_NUMBER: _ClassVar[int]
    SHARE_KEYS_FIELD_NUMBER: _ClassVar[int]
    MASKED_INPUT_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    UNMASK_FIELD_NUMBER: _ClassVar[int]
    advertise: AdvertiseRequest
    share_keys: ShareKeysRequest
    masked_input: MaskedInputRequest
    consistency: ConsistencyRequest
    unmask: UnmaskRequest
    def __init__(self, advertise: _Optional[_Union[AdvertiseRequest, _Mapping]] = ..., share_keys: _Optional[_Union[ShareKeysRequest, _Mapping]] = ..., masked_input: _Optional[_Union[MaskedInputRequest, _Mapping]] = ..., consistency: _Optional[_Union[ConsistencyRequest, _Mapping]] = ..., unmask: _Optional[_Union[UnmaskRequest, _Mapping]] = ...) -> None: ...

class SessionResponse(_message.Message):
    __slots__ = ("advertise", "share_keys", "masked_input", "consistency", "unmask")
    ADVERTISE_FIELD_NUMBER: _ClassVar[int]
    SHARE_KEYS_FIELD_NUMBER: _ClassVar[int]
    MASKED_INPUT_FIELD_NUMBER: _ClassVar[int]
    CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    UNMASK_FIELD_NUMBER: _ClassVar[int]
    advertise: AdvertiseResponse
    share_keys: ShareKeysResponse
    masked_input: MaskedInputResponse
    consistency: ConsistencyResponse
    unmask: UnmaskResponse
    def __init__(self, advertise: _Optional[_Union[AdvertiseResponse, _Mapping]] = ..., share_keys: _Optional[_Union[ShareKeysResponse, _Mapping]] = ..., masked_input: _Optional[_Union[MaskedInputResponse, _Mapping]] = ..., consistency: _Optional[_Union[ConsistencyResponse, _Mapping]] = ..., unmask: _Optional[_Union[UnmaskResponse, _Mapping]] = ...) -> None: ...

class Advertisement(_message.Message):
    __slots__ = ("member", "c_pk", "s_pk", "signature", "certificate")
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    C_PK_FIELD_NUMBER: _ClassVar[int]
    S_PK_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    CERTIFICATE_FIELD_NUMBER: _ClassVar[int]
    member: str
    c_pk: bytes
    s_pk: bytes
    signature: bytes
    certificate: bytes
    def __init__(self, member: _Optional[str] = ..., c_pk: _Optional[bytes] = ..., s_pk: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., certificate: _Optional[bytes] = ...) -> None: ...

class EncryptedShares(_message.Message):
    __slots__ = ("sender", "recipient", "nonce", "ciphertext")
    SENDER_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    CIPHERTEXT_FIELD_NUMBER: _ClassVar[int]
    sender: str
    recipient: str
    nonce: bytes
    ciphertext: bytes
    def __init__(self, sender: _Optional[str] = ..., recipient: _Optional[str] = ..., nonce: _Optional[bytes] = ..., ciphertext: _Optional[bytes] = ...) -> None: ...

class ConsistencySignature(_message.Message):
    __slots__ = ("member", "signature")
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    member: str
    signature: bytes
    def __init__(self, member: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class MemberShare(_message.Message):
    __slots__ = ("owner", "x", "share")
    OWNER_FIELD_NUMBER: _ClassVar[int]
    X_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    owner: str
    x: int
    share: bytes
    def __init__(self, owner: _Optional[str] = ..., x: _Optional[int] = ..., share: _Optional[bytes] = ...) -> None: ...

class SecureValue(_message.Message):
    __slots__ = ("group", "name", "unit")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    group: _containers.RepeatedCompositeFieldContainer[_node_service_pb2.GroupValue]
    name: str
    unit: float
    def __init__(self, group: _Optional[_Iterable[_Union[_node_service_pb2.GroupValue, _Mapping]]] = ..., name: _Optional[str] = ..., unit: _Optional[float] = ...) -> None: ...

class SecureLayout(_message.Message):
    __slots__ = ("values", "center", "lower", "upper", "sigma_share", "delta_l2", "rho_network", "rho_alone", "honest", "term_bounds")
    VALUES_FIELD_NUMBER: _ClassVar[int]
    CENTER_FIELD_NUMBER: _ClassVar[int]
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    SIGMA_SHARE_FIELD_NUMBER: _ClassVar[int]
    DELTA_L2_FIELD_NUMBER: _ClassVar[int]
    RHO_NETWORK_FIELD_NUMBER: _ClassVar[int]
    RHO_ALONE_FIELD_NUMBER: _ClassVar[int]
    HONEST_FIELD_NUMBER: _ClassVar[int]
    TERM_BOUNDS_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[SecureValue]
    center: float
    lower: float
    upper: float
    sigma_share: float
    delta_l2: float
    rho_network: float
    rho_alone: float
    honest: int
    term_bounds: _containers.RepeatedCompositeFieldContainer[_node_service_pb2.Bounds]
    def __init__(self, values: _Optional[_Iterable[_Union[SecureValue, _Mapping]]] = ..., center: _Optional[float] = ..., lower: _Optional[float] = ..., upper: _Optional[float] = ..., sigma_share: _Optional[float] = ..., delta_l2: _Optional[float] = ..., rho_network: _Optional[float] = ..., rho_alone: _Optional[float] = ..., honest: _Optional[int] = ..., term_bounds: _Optional[_Iterable[_Union[_node_service_pb2.Bounds, _Mapping]]] = ...) -> None: ...

class AdvertiseRequest(_message.Message):
    __slots__ = ("session", "idempotency_key", "query", "members", "threshold", "colluding")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    COLLUDING_FIELD_NUMBER: _ClassVar[int]
    session: str
    idempotency_key: str
    query: _node_service_pb2.Query
    members: _containers.RepeatedScalarFieldContainer[str]
    threshold: int
    colluding: int
    def __init__(self, session: _Optional[str] = ..., idempotency_key: _Optional[str] = ..., query: _Optional[_Union[_node_service_pb2.Query, _Mapping]] = ..., members: _Optional[_Iterable[str]] = ..., threshold: _Optional[int] = ..., colluding: _Optional[int] = ...) -> None: ...

class AdvertiseResponse(_message.Message):
    __slots__ = ("advertisement", "layout")
    ADVERTISEMENT_FIELD_NUMBER: _ClassVar[int]
    LAYOUT_FIELD_NUMBER: _ClassVar[int]
    advertisement: Advertisement
    layout: SecureLayout
    def __init__(self, advertisement: _Optional[_Union[Advertisement, _Mapping]] = ..., layout: _Optional[_Union[SecureLayout, _Mapping]] = ...) -> None: ...

class ShareKeysRequest(_message.Message):
    __slots__ = ("session", "advertisements")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    ADVERTISEMENTS_FIELD_NUMBER: _ClassVar[int]
    session: str
    advertisements: _containers.RepeatedCompositeFieldContainer[Advertisement]
    def __init__(self, session: _Optional[str] = ..., advertisements: _Optional[_Iterable[_Union[Advertisement, _Mapping]]] = ...) -> None: ...

class ShareKeysResponse(_message.Message):
    __slots__ = ("shares",)
    SHARES_FIELD_NUMBER: _ClassVar[int]
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShares]
    def __init__(self, shares: _Optional[_Iterable[_Union[EncryptedShares, _Mapping]]] = ...) -> None: ...

class MaskedInputRequest(_message.Message):
    __slots__ = ("session", "shares")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    SHARES_FIELD_NUMBER: _ClassVar[int]
    session: str
    shares: _containers.RepeatedCompositeFieldContainer[EncryptedShares]
    def __init__(self, session: _Optional[str] = ..., shares: _Optional[_Iterable[_Union[EncryptedShares, _Mapping]]] = ...) -> None: ...

class MaskedInputResponse(_message.Message):
    __slots__ = ("member", "vector", "replayed", "budget")
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    member: str
    vector: bytes
    replayed: bool
    budget: _node_service_pb2.Budget
    def __init__(self, member: _Optional[str] = ..., vector: _Optional[bytes] = ..., replayed: _Optional[bool] = ..., budget: _Optional[_Union[_node_service_pb2.Budget, _Mapping]] = ...) -> None: ...

class ConsistencyRequest(_message.Message):
    __slots__ = ("session", "survivors")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    session: str
    survivors: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, session: _Optional[str] = ..., survivors: _Optional[_Iterable[str]] = ...) -> None: ...

class ConsistencyResponse(_message.Message):
    __slots__ = ("signature",)
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    signature: ConsistencySignature
    def __init__(self, signature: _Optional[_Union[ConsistencySignature, _Mapping]] = ...) -> None: ...

class UnmaskRequest(_message.Message):
    __slots__ = ("session", "survivors", "dropped", "signatures")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    SURVIVORS_FIELD_NUMBER: _ClassVar[int]
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    SIGNATURES_FIELD_NUMBER: _ClassVar[int]
    session: str
    survivors: _containers.RepeatedScalarFieldContainer[str]
    dropped: _containers.RepeatedScalarFieldContainer[str]
    signatures: _containers.RepeatedCompositeFieldContainer[ConsistencySignature]
    def __init__(self, session: _Optional[str] = ..., survivors: _Optional[_Iterable[str]] = ..., dropped: _Optional[_Iterable[str]] = ..., signatures: _Optional[_Iterable[_Union[ConsistencySignature, _Mapping]]] = ...) -> None: ...

class UnmaskResponse(_message.Message):
    __slots__ = ("member", "self_mask_shares", "key_shares")
    MEMBER_FIELD_NUMBER: _ClassVar[int]
    SELF_MASK_SHARES_FIELD_NUMBER: _ClassVar[int]
    KEY_SHARES_FIELD_NUMBER: _ClassVar[int]
    member: str
    self_mask_shares: _containers.RepeatedCompositeFieldContainer[MemberShare]
    key_shares: _containers.RepeatedCompositeFieldContainer[MemberShare]
    def __init__(self, member: _Optional[str] = ..., self_mask_shares: _Optional[_Iterable[_Union[MemberShare, _Mapping]]] = ..., key_shares: _Optional[_Iterable[_Union[MemberShare, _Mapping]]] = ...) -> None: ...
