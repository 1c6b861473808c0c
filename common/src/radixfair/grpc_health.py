"""grpc.health.v1 (Check and Watch) and server reflection (v1 and v1alpha), the same on every service.

grpcio-reflection ships only the v1alpha service, while current tools
(grpcurl, Postman, gRPC UI) ask for grpc.reflection.v1 first. The two
protocols are the same messages with the same field numbers under another
package, so the v1 service is the v1alpha servicer behind the v1 method
name; its descriptor is derived from v1alpha's and added to the descriptor
pool, so reflection can describe itself under both names.
"""

from __future__ import annotations

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

REFLECTION_V1_SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
_V1_FILE = "grpc/reflection/v1/reflection.proto"
_V1ALPHA_PACKAGE = f".{reflection_pb2.DESCRIPTOR.package}."
_V1_PACKAGE = ".grpc.reflection.v1."


def add_health_and_reflection(
    server: grpc.aio.Server, service_full_names: list[str]
) -> health.aio.HealthServicer:
    """Registers health (every named service plus the empty overall name) and reflection v1 and v1alpha."""
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    names = [*service_full_names, health.SERVICE_NAME, reflection.SERVICE_NAME, REFLECTION_V1_SERVICE_NAME]
    reflection_servicer = reflection.aio.ReflectionServicer(names)
    _add_reflection_descriptor_v1(descriptor_pool.Default())
    server.add_generic_rpc_handlers(
        [_reflection_handler(reflection.SERVICE_NAME, reflection_servicer)]
        + [_reflection_handler(REFLECTION_V1_SERVICE_NAME, reflection_servicer)]
    )
    return servicer


async def set_serving(
    servicer: health.aio.HealthServicer, service_full_names: list[str], serving: bool
) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ["", *service_full_names]:
        await servicer.set(name, status)


def _reflection_handler(
    service_name: str, servicer: reflection.aio.ReflectionServicer
) -> grpc.GenericRpcHandler:
    # v1 and v1alpha messages are wire-identical, so one pair of (de)serializers serves both names.
    method = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(service_name, {"ServerReflectionInfo": method})


def _add_reflection_descriptor_v1(pool: descriptor_pool.DescriptorPool) -> None:
    """Adds grpc/reflection/v1/reflection.proto (v1alpha's file under the v1 package) once per pool."""
    try:
        pool.FindFileByName(_V1_FILE)
        return
    except KeyError:
        pass
    proto = descriptor_pb2.FileDescriptorProto()
    reflection_pb2.DESCRIPTOR.CopyToProto(proto)
    proto.name = _V1_FILE
    proto.package = _V1_PACKAGE.strip(".")
    proto.ClearField("options")
    for message in proto.message_type:
        _rename_message_types(message)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(_V1ALPHA_PACKAGE, _V1_PACKAGE)
            method.output_type = method.output_type.replace(_V1ALPHA_PACKAGE, _V1_PACKAGE)
    pool.AddSerializedFile(proto.SerializeToString())


def _rename_message_types(message: descriptor_pb2.DescriptorProto) -> None:
    for field in message.field:
        if field.HasField("type_name"):  # message and enum fields only; scalars must not get one
            field.type_name = field.type_name.replace(_V1ALPHA_PACKAGE, _V1_PACKAGE)
    for nested in message.nested_type:
        _rename_message_types(nested)
