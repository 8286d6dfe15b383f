"""Regenerate the checked-in Python stubs of the bridgestat.v1 contract.

Run `python protos/generate.py` after editing a .proto file; `--check` regenerates into a
temporary folder and exits non-zero when the checked-in stubs differ (stale).
"""

from __future__ import annotations

import argparse
import filecmp
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

ROOT = Path(__file__).resolve().parent
SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")


def generate(out: Path, root: Path = ROOT) -> None:
    """Run protoc with the pinned grpcio-tools so stubs import as bridgestat.v1."""
    protos = sorted((root / "bridgestat" / "v1").glob("*.proto"))
    args = [
        "protoc",
        f"--proto_path={root}",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *[str(p.relative_to(root)) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def stale_files(root: Path = ROOT) -> list[str]:
    """Return the generated files under `root` that differ from a fresh generation."""
    with tempfile.TemporaryDirectory() as tmp:
        generate(Path(tmp), root)
        stale = []
        for proto in sorted((root / "bridgestat" / "v1").glob("*.proto")):
            rel = proto.relative_to(root).with_suffix("")
            for suffix in SUFFIXES:
                fresh = Path(tmp) / f"{rel}{suffix}"
                checked_in = root / f"{rel}{suffix}"
                if not checked_in.exists() or not filecmp.cmp(fresh, checked_in, shallow=False):
                    stale.append(str(checked_in.relative_to(root)))
        return stale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail when stubs are stale")
    if parser.parse_args().check:
        stale = stale_files()
        if stale:
            sys.exit("stale generated stubs (run python protos/generate.py): " + ", ".join(stale))
        print("generated stubs are up to date")
    else:
        generate(ROOT)


if __name__ == "__main__":
    main()
