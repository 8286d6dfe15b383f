"""pandas without Apache Arrow where the node reads data: `bridgestat-node check` and the
loader process that `serve` starts (node/loader.py; the serving process never imports
pandas at all).

pandas 3 imports pyarrow and pyarrow.compute whenever pyarrow is installed, to back its
string columns; in a node that costs about 60 MiB at start-up and Arrow's memory pool keeps
more after loading (benchmarks/node_memory.py). The node never needs Arrow inside pandas:
CSV, Excel and PostgreSQL are read as Python strings, and Parquet is read with pyarrow
directly (`sources.read_parquet_folder`), so pyarrow is loaded only for a Parquet source.

pandas treats a pyarrow that cannot be imported as not installed (its documented optional
dependency; strings are then stored as Python objects, with the same values and results),
and Python's import system refuses a module whose `sys.modules` entry is None. Importing
pandas that way (`import_pandas_without_arrow`, called by `bridgestat-node check` once the
arguments are parsed, so `--help` stays free of pandas, and first thing in the loader
process) removes the entry again at once. A process that merely imports the node's modules
(tests, a notebook) keeps its pandas as it is, with Arrow (`to_parquet` in the tests needs
it).
"""

from __future__ import annotations

import sys
from pathlib import Path

PROGRAM = "bridgestat-node"
PROGRAM_MODULE = "bridgestat.node.cli"


def is_node_program() -> bool:
    """Whether this process runs `bridgestat-node` (not a test or a notebook importing it)."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return Path(sys.argv[0]).name == PROGRAM or getattr(spec, "name", None) == PROGRAM_MODULE


def import_pandas_without_arrow() -> bool:
    """Import pandas as if pyarrow were not installed; False (and nothing done) when pandas
    or pyarrow is already imported."""
    if "pandas" in sys.modules or "pyarrow" in sys.modules:
        return False
    sys.modules["pyarrow"] = None  # type: ignore[assignment]  # import refuses it
    try:
        import pandas  # noqa: F401
    finally:
        del sys.modules["pyarrow"]
    return True

