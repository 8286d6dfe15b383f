"""Load and check the member's data in a short-lived child process, so that the serving
process never imports pandas, pyarrow, openpyxl or psycopg (benchmarks/node_memory.py).

`load_columns` starts `python -m bridgestat.node.loader` (the same interpreter), sends it
what to read (the data config, the schema and the config's name for messages, pickled on
its stdin: a parent talking to its own child), and gets back on its stdout one JSON line,
then on success the checked data as `columns.ColumnStore` (an `.npz`, numpy arrays only,
read with `allow_pickle=False`). Nothing goes over the network and nothing of the member's
data is written to disk. The child reads and checks exactly as `sources.load` does; its
outcome comes back as what `sources.load` would raise in the serving process: a
ConfigError naming the file and key, a DataError listing the problems, and the warnings
of servable data logged there as before; a line with the rows loaded and the loader's
peak memory follows (event `data_loaded`). The child's stderr is the parent's (with
`log_format: json`, the pipe that turns every line into a JSON object).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import resource
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from io import BytesIO
from typing import Any, BinaryIO

from bridgestat.node.columns import ColumnStore
from bridgestat.node.config import DataConfig
from bridgestat.node.errors import ConfigError, DataError
from bridgestat.node.schema import Schema

MODULE = "bridgestat.node.loader"
# sources.servable_data logs the warnings of servable data under this logger's name
DATA_LOGGER = "bridgestat.node.data"
log = logging.getLogger("bridgestat.node")


@dataclass(frozen=True)
class Request:
    """What the child reads: the source, the schema to check against, the config's name."""

    data: DataConfig
    schema: Schema
    origin: str


def load_columns(data: DataConfig, schema: Schema, origin: str = "(config)") -> ColumnStore:
    """The member's checked data as numpy columns, loaded in a child process; raises what
    `sources.load` raises (ConfigError, DataError) and logs the same warnings."""
    request = pickle.dumps(Request(data, schema, origin))
    # -P: the working directory is not put on the child's sys.path (nothing there can
    # stand in for the node's modules)
    done = subprocess.run([sys.executable, "-P", "-m", MODULE], input=request,
                          stdout=subprocess.PIPE, check=False)
    header, _, payload = done.stdout.partition(b"\n")
    try:
        outcome: dict[str, Any] = json.loads(header)
    except ValueError:
        ended = (f"was killed by signal {-done.returncode} (out of memory?)"
                 if done.returncode < 0 else f"ended with exit code {done.returncode}")
        raise DataError(f"loading the data ({origin}: data) failed: the loader process "
                        f"{ended} without an answer (its messages are in the node's log "
                        "above)") from None
    return _result(outcome, payload)


def _result(outcome: dict[str, Any], payload: bytes) -> ColumnStore:
    kind = outcome["outcome"]
    if kind == "config":
        raise ConfigError(outcome["source"], outcome["key"], outcome["problem"])
    if kind == "data":
        raise DataError(outcome["message"])
    if kind == "crash":
        raise DataError(f"loading the data failed: {outcome['message']}")
    if outcome.get("warnings"):
        logging.getLogger(DATA_LOGGER).warning("the data in %s is served with warnings:\n%s",
                                               outcome["where"], outcome["warnings"])
    store = ColumnStore.load(BytesIO(payload))
    rows = {name: len(table) for name, table in store.tables.items()}
    log.info("data loaded from %s: %s; loader process peak %d MiB", outcome["where"],
             ", ".join(f"{name} {n:,} rows" for name, n in rows.items()),
             outcome["peak_mib"], extra={"event": "data_loaded", "rows": rows,
                                         "loader_peak_mib": outcome["peak_mib"]})
    return store


# --------------------------------------------------------------------------- the child


def _load(request: Request, out: BinaryIO) -> None:
    """Read, check and convert as `sources.load` does; answer on `out`."""
    from bridgestat.node import arrowless

    arrowless.import_pandas_without_arrow()  # Arrow only for a Parquet source
    from bridgestat.node.data import check_raw
    from bridgestat.node.sources import read

    raw = read(request.data, request.schema, request.origin)
    report, member = check_raw(raw, request.schema)
    if not report.servable:
        _answer(out, {"outcome": "data", "message": f"the data in {raw.where} cannot be "
                      f"served:\n{report.format(max_per_kind=20)}"})
        return
    where = raw.where
    store = ColumnStore.from_frames(member.tables, request.schema)
    del raw, member
    buffer = BytesIO()
    store.save(buffer)
    warnings = report.format() if report.warning_count else ""
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # Linux: KiB
    _answer(out, {"outcome": "ok", "where": where, "warnings": warnings,
                  "peak_mib": peak_mib}, buffer.getbuffer())


def _answer(out: BinaryIO, outcome: dict[str, Any], payload: bytes | memoryview = b"") -> None:
    out.write(json.dumps(outcome).encode() + b"\n")
    out.write(payload)
    out.flush()


def exit_with_parent(parent: int, every: float = 0.5) -> threading.Thread:
    """Stop this child once the node that started it is gone (killed while loading: nobody
    would read the answer, and a large load would otherwise hold memory and a core on for
    minutes). Watches for the parent process id to change (the child is re-parented)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every)
        os._exit(1)
    watcher = threading.Thread(target=watch, name="loader-parent-watch", daemon=True)
    watcher.start()
    return watcher


def main() -> int:
    """The child: a request on stdin, the answer on stdout (which nothing else may write
    to: stray prints of a library go to stderr)."""
    exit_with_parent(os.getppid())
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    request: Request = pickle.loads(sys.stdin.buffer.read())
    try:
        _load(request, out)
    except ConfigError as exc:
        _answer(out, {"outcome": "config", "source": exc.source, "key": exc.key,
                      "problem": exc.problem})
    except DataError as exc:
        _answer(out, {"outcome": "data", "message": str(exc)})
    except Exception as exc:  # noqa: BLE001  # anything else: named, never a bare crash
        traceback.print_exc()
        _answer(out, {"outcome": "crash", "message": f"{type(exc).__name__}: {exc}"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
