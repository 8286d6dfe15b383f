"""Names and addresses as both sides check them: member names, certificate names, host:port."""

from __future__ import annotations

import re

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
NAME_RULE = "use letters, digits, '.', '_' or '-' (max 64, starting with a letter or digit)"
COORDINATOR = "coordinator"  # the coordinator's (and its hub's) certificate name by default


def is_name(value: object) -> bool:
    """A member's (or a certificate's) name: what `node_id`, the network file and `bridgestat
    ca` accept."""
    return isinstance(value, str) and NAME_PATTERN.match(value) is not None


def parse_address(value: object, *, bind: bool = False) -> tuple[str, int]:
    """(host, port) of a `host:port` that gRPC can dial (port 1-65535) or, with `bind`, listen
    on (port 0 too: the system picks a free port, as tests do).

    Raises ValueError saying what is wrong; callers add the file and key.
    """
    host, sep, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"must be host:port, got {value!r}")
    if not (0 if bind else 1) <= int(port) <= 65535:
        raise ValueError(f"the port must be {'0' if bind else '1'}-65535, got {value!r}")
    return host, int(port)


def is_address(value: object, *, bind: bool = False) -> bool:
    """Whether `value` is a host:port that `parse_address` accepts."""
    try:
        parse_address(value, bind=bind)
    except ValueError:
        return False
    return True
