"""CPU of one ledger charge (reserve + durable commit) at a node alone in its process.

A secure query and every Gaussian release charge rho; the ledger checks the new running
total against its cap in (epsilon, delta) terms. OpenDP's conversion of a rho takes about
4 ms and the total is a new rho at every charge, so a node that converted it each time paid
that on every rho query. `node_host.py`-style benchmarks hide it: nodes in one process with
the same history share the conversion cache. `Loss.within` decides by an analytic bound
unless the total is near the cap.

Usage: python benchmarks/ledger_charge.py [--charges 200] [--exact]
(--exact: compare with the exact conversion at every charge, the ledger before the bound)
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bridgestat.node.ledger import Ledger
from bridgestat.node.loss import Epsilon, Loss


def cpu_per_charge(loss: Loss, charges: int, exact: bool) -> float:
    """Mean CPU seconds of reserve + commit over `charges` charges of `loss`."""
    with tempfile.TemporaryDirectory() as folder:
        ledger = Ledger(Path(folder) / "ledger.sqlite", "intake", Epsilon.of(1000.0))
        start = time.process_time()
        for i in range(charges):
            if exact:  # what the ledger computed before `within`
                (ledger.state().spent_loss + loss).epsilon_at(ledger.delta)
            ledger.reserve(f"k{i}", "fingerprint", loss)
            ledger.commit(f"k{i}", "release")
        return (time.process_time() - start) / charges


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--charges", type=int, default=200)
    parser.add_argument("--exact", action="store_true")
    args = parser.parse_args(argv)
    for label, loss in (("pure epsilon 0.01", Loss.of(epsilon=0.01)),
                        ("rho 0.001", Loss.of(rho=0.001))):
        ms = cpu_per_charge(loss, args.charges, exact=False) * 1e3
        line = f"{label:<18} {ms:7.3f} ms CPU per charge"
        if args.exact:
            line += f"; with the exact conversion each time {cpu_per_charge(loss, args.charges, True) * 1e3:7.3f} ms"
        print(line)


if __name__ == "__main__":
    main()
