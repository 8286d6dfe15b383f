"""A gate that holds queries inside a node's engine, for tests of what happens to calls in
flight (a certificate reload, a graceful shutdown)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from bridgestat.node.engine import Engine


@dataclass
class Gate:
    """Holds every RunQuery inside the engine until released."""

    entered: threading.Event
    release: threading.Event

    def wrap(self, engine: Engine) -> Engine:
        run = engine.run

        def held(key: str, query: Any, caller: str = "anonymous") -> Any:
            self.entered.set()
            self.release.wait(60)
            return run(key, query, caller)
        engine.run = held  # type: ignore[method-assign]
        return engine
