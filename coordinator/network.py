"""The network file (YAML): which members there are and where their nodes listen.

    members:
      - {name: member-01, address: 127.0.0.1:50051}
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class NetworkFileError(ValueError):
    """A network file is unusable; names the file and key."""


@dataclass(frozen=True)
class Member:
    name: str
    address: str


@dataclass(frozen=True)
class NetworkSpec:
    members: tuple[Member, ...]


def load_network(path: Path) -> NetworkSpec:
    try:
        raw: Any = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise NetworkFileError(f"{path}: cannot read network file: {exc}") from exc
    if not isinstance(raw, dict) or set(raw) - {"members"}:
        raise NetworkFileError(f"{path}: must be a mapping with the single key 'members'")
    items = raw.get("members")
    if not isinstance(items, list) or not items:
        raise NetworkFileError(f"{path}: members: must be a non-empty list")
    members = tuple(_member(item, path, i) for i, item in enumerate(items))
    names = [m.name for m in members]
    if len(set(names)) != len(names):
        raise NetworkFileError(f"{path}: members: names must be unique")
    return NetworkSpec(members)


def _member(item: Any, path: Path, index: int) -> Member:
    where = f"{path}: members[{index}]"
    if not isinstance(item, dict) or set(item) - {"name", "address"}:
        raise NetworkFileError(f"{where}: must be a mapping with keys name and address")
    name, address = item.get("name"), item.get("address")
    if not isinstance(name, str) or not name:
        raise NetworkFileError(f"{where}.name: must be a non-empty string")
    if not isinstance(address, str) or ":" not in address:
        raise NetworkFileError(f"{where}.address: must be host:port, got {address!r}")
    return Member(name, address)
