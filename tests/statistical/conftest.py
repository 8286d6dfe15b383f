"""The statistical tests run the benchmarks' cores (`benchmarks/` is not installed): put the
checkout on sys.path once, before their modules are imported."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
