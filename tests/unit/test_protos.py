"""The checked-in stubs match the .proto sources; drift is caught."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from types import ModuleType

PROTOS = Path(__file__).resolve().parents[2] / "protos"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate", PROTOS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_checked_in_stubs_are_fresh() -> None:
    assert _generator().stale_files() == []


def test_edited_proto_makes_stubs_stale(tmp_path: Path) -> None:
    copy = tmp_path / "protos"
    shutil.copytree(PROTOS, copy)
    proto = copy / "bridgestat" / "v1" / "node_service.proto"
    proto.write_text(proto.read_text() + "\nmessage Added { string x = 1; }\n")
    stale = _generator().stale_files(copy)
    assert "bridgestat/v1/node_service_pb2.py" in stale
    assert "bridgestat/v1/node_service_pb2.pyi" in stale


def test_stubs_import_as_bridgestat_v1() -> None:
    from bridgestat.v1 import node_service_pb2, node_service_pb2_grpc

    assert node_service_pb2.DESCRIPTOR.package == "bridgestat.v1"
    assert hasattr(node_service_pb2_grpc, "NodeServiceStub")
