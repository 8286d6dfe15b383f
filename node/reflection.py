"""gRPC server reflection under both names, `grpc.reflection.v1` and `v1alpha`.

grpcio-reflection (1.85) ships only the v1alpha service, while current clients (grpcurl,
Postman, grpcui) ask for v1 first. The two protocols are the same messages in another
package (grpc/reflection/v1/reflection.proto is v1alpha's file with the package renamed), so
the v1 service is served by the same servicer: its requests and responses are read and
written with v1alpha's message classes, whose wire format is identical. The v1 file
descriptor is added to the default pool (v1alpha's, renamed) so that a client can also
resolve the v1 service itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2 as v1alpha_pb2

if TYPE_CHECKING:
    Server = grpc.Server
    Handler = grpc.GenericRpcHandler

V1_PACKAGE = "grpc.reflection.v1"
V1_FILE = "grpc/reflection/v1/reflection.proto"
V1_SERVICE_NAME = f"{V1_PACKAGE}.ServerReflection"
V1ALPHA_SERVICE_NAME: str = reflection.SERVICE_NAME
SERVICE_NAMES = (V1_SERVICE_NAME, V1ALPHA_SERVICE_NAME)


def v1_file() -> descriptor_pb2.FileDescriptorProto:
    """v1alpha's reflection.proto with the v1 package and file name (and no options)."""
    proto = descriptor_pb2.FileDescriptorProto()
    v1alpha_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name, proto.package = V1_FILE, V1_PACKAGE
    proto.ClearField("options")
    prefix = f".{v1alpha_pb2.DESCRIPTOR.package}."
    for message in proto.message_type:
        for item in message.field:
            if item.type_name.startswith(prefix):
                item.type_name = f".{V1_PACKAGE}." + item.type_name[len(prefix):]
    for service in proto.service:
        for method in service.method:
            method.input_type = f".{V1_PACKAGE}." + method.input_type[len(prefix):]
            method.output_type = f".{V1_PACKAGE}." + method.output_type[len(prefix):]
    return proto


def _register_v1(pool: descriptor_pool.DescriptorPool) -> None:
    """Add the v1 file to `pool` once."""
    try:
        pool.FindFileByName(V1_FILE)
    except KeyError:
        pool.AddSerializedFile(v1_file().SerializeToString())


def enable_reflection(service_names: tuple[str, ...], server: Server) -> None:
    """Serve reflection for `service_names` (plus both reflection services) on `server`,
    under grpc.reflection.v1 and grpc.reflection.v1alpha."""
    _register_v1(descriptor_pool.Default())
    names = tuple(dict.fromkeys((*service_names, *SERVICE_NAMES)))
    servicer = reflection.ReflectionServicer(names)
    handler = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=v1alpha_pb2.ServerReflectionRequest.FromString,
        response_serializer=v1alpha_pb2.ServerReflectionResponse.SerializeToString)
    handlers: dict[str, Any] = {"ServerReflectionInfo": handler}
    for name in (V1ALPHA_SERVICE_NAME, V1_SERVICE_NAME):  # as generated code registers
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
        server.add_registered_method_handlers(name, handlers)  # type: ignore[attr-defined]
