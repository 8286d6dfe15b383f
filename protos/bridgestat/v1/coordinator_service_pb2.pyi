from bridgestat.v1 import node_service_pb2 as _node_service_pb2
from bridgestat.v1 import secure_aggregation_pb2 as _secure_aggregation_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Hello(_message.Message):
    __slots__ = ("node_id", "software_version")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    software_version: str
    def __init__(self, node_id: _Optional[str] = ..., software_version: _Optional[str] = ...) -> None: ...

class NodeMessage(_message.Message):
    __slots__ = ("hello", "reply")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    reply: NodeReply
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., reply: _Optional[_Union[NodeReply, _Mapping]] = ...) -> None: ...

class CoordinatorRequest(_message.Message):
    __slots__ = ("request_id", "caller", "get_node_info", "run_query", "secure_advertise", "secure_share_keys", "secure_masked_input", "secure_consistency", "secure_unmask", "secure_close")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CALLER_FIELD_NUMBER: _ClassVar[int]
    GET_NODE_INFO_FIELD_NUMBER: _ClassVar[int]
    RUN_QUERY_FIELD_NUMBER: _ClassVar[int]
    SECURE_ADVERTISE_FIELD_NUMBER: _ClassVar[int]
    SECURE_SHARE_KEYS_FIELD_NUMBER: _ClassVar[int]
    SECURE_MASKED_INPUT_FIELD_NUMBER: _ClassVar[int]
    SECURE_CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    SECURE_UNMASK_FIELD_NUMBER: _ClassVar[int]
    SECURE_CLOSE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    caller: str
    get_node_info: _node_service_pb2.GetNodeInfoRequest
    run_query: _node_service_pb2.RunQueryRequest
    secure_advertise: _secure_aggregation_pb2.AdvertiseRequest
    secure_share_keys: _secure_aggregation_pb2.ShareKeysRequest
    secure_masked_input: _secure_aggregation_pb2.MaskedInputRequest
    secure_consistency: _secure_aggregation_pb2.ConsistencyRequest
    secure_unmask: _secure_aggregation_pb2.UnmaskRequest
    secure_close: SecureClose
    def __init__(self, request_id: _Optional[str] = ..., caller: _Optional[str] = ..., get_node_info: _Optional[_Union[_node_service_pb2.GetNodeInfoRequest, _Mapping]] = ..., run_query: _Optional[_Union[_node_service_pb2.RunQueryRequest, _Mapping]] = ..., secure_advertise: _Optional[_Union[_secure_aggregation_pb2.AdvertiseRequest, _Mapping]] = ..., secure_share_keys: _Optional[_Union[_secure_aggregation_pb2.ShareKeysRequest, _Mapping]] = ..., secure_masked_input: _Optional[_Union[_secure_aggregation_pb2.MaskedInputRequest, _Mapping]] = ..., secure_consistency: _Optional[_Union[_secure_aggregation_pb2.ConsistencyRequest, _Mapping]] = ..., secure_unmask: _Optional[_Union[_secure_aggregation_pb2.UnmaskRequest, _Mapping]] = ..., secure_close: _Optional[_Union[SecureClose, _Mapping]] = ...) -> None: ...

class SecureClose(_message.Message):
    __slots__ = ("session",)
    SESSION_FIELD_NUMBER: _ClassVar[int]
    session: str
    def __init__(self, session: _Optional[str] = ...) -> None: ...

class SecureClosed(_message.Message):
    __slots__ = ("was_open",)
    WAS_OPEN_FIELD_NUMBER: _ClassVar[int]
    was_open: bool
    def __init__(self, was_open: _Optional[bool] = ...) -> None: ...

class ErrorStatus(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class NodeReply(_message.Message):
    __slots__ = ("request_id", "node_info", "run_query", "error", "secure_advertise", "secure_share_keys", "secure_masked_input", "secure_consistency", "secure_unmask", "secure_close")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_INFO_FIELD_NUMBER: _ClassVar[int]
    RUN_QUERY_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SECURE_ADVERTISE_FIELD_NUMBER: _ClassVar[int]
    SECURE_SHARE_KEYS_FIELD_NUMBER: _ClassVar[int]
    SECURE_MASKED_INPUT_FIELD_NUMBER: _ClassVar[int]
    SECURE_CONSISTENCY_FIELD_NUMBER: _ClassVar[int]
    SECURE_UNMASK_FIELD_NUMBER: _ClassVar[int]
    SECURE_CLOSE_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    node_info: _node_service_pb2.GetNodeInfoResponse
    run_query: _node_service_pb2.RunQueryResponse
    error: ErrorStatus
    secure_advertise: _secure_aggregation_pb2.AdvertiseResponse
    secure_share_keys: _secure_aggregation_pb2.ShareKeysResponse
    secure_masked_input: _secure_aggregation_pb2.MaskedInputResponse
    secure_consistency: _secure_aggregation_pb2.ConsistencyResponse
    secure_unmask: _secure_aggregation_pb2.UnmaskResponse
    secure_close: SecureClosed
    def __init__(self, request_id: _Optional[str] = ..., node_info: _Optional[_Union[_node_service_pb2.GetNodeInfoResponse, _Mapping]] = ..., run_query: _Optional[_Union[_node_service_pb2.RunQueryResponse, _Mapping]] = ..., error: _Optional[_Union[ErrorStatus, _Mapping]] = ..., secure_advertise: _Optional[_Union[_secure_aggregation_pb2.AdvertiseResponse, _Mapping]] = ..., secure_share_keys: _Optional[_Union[_secure_aggregation_pb2.ShareKeysResponse, _Mapping]] = ..., secure_masked_input: _Optional[_Union[_secure_aggregation_pb2.MaskedInputResponse, _Mapping]] = ..., secure_consistency: _Optional[_Union[_secure_aggregation_pb2.ConsistencyResponse, _Mapping]] = ..., secure_unmask: _Optional[_Union[_secure_aggregation_pb2.UnmaskResponse, _Mapping]] = ..., secure_close: _Optional[_Union[SecureClosed, _Mapping]] = ...) -> None: ...
