"""`bridgestat-node`: the command member IT uses (check, serve, budget)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from bridgestat.node.config import load_config
from bridgestat.node.data import check_folder
from bridgestat.node.errors import NodeError
from bridgestat.node.ledger import Ledger
from bridgestat.node.loss import Epsilon


def _check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    schema = config.schema()
    print(f"config {config.source}: ok (node {config.node_id}, schema {schema.name} "
          f"{schema.version})")
    report, _ = check_folder(config.data_path, schema)
    print(f"data {config.data_path}:")
    print(report.format(max_per_kind=args.max_per_kind))
    return 0 if report.servable else 1


def _serve(args: argparse.Namespace) -> int:
    from bridgestat.node.app import serve  # imports grpc only when serving

    serve(args.config)
    return 0


def _budget(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    ledger = Ledger(config.ledger_path, config.budget.dataset,
                    Epsilon.of(config.budget.total_epsilon), config.budget.delta)
    state = ledger.state()
    charges = ledger.charges()
    rho = f" (of which rho {float(state.spent_loss.rho):.6g} at delta {state.delta:g})" \
        if state.spent_loss.rho else ""
    print(f"dataset {state.dataset}: spent epsilon {state.spent} of {state.total}{rho}, "
          f"remaining {state.remaining}; largest per query "
          f"{config.budget.max_epsilon_per_query:g}; {len(charges)} queries charged")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bridgestat-node", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (("check", _check, "validate the config and the data"),
                             ("serve", _serve, "serve the node over gRPC"),
                             ("budget", _budget, "show spent and remaining privacy loss")):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--config", type=Path, required=True, help="node config (YAML)")
        cmd.set_defaults(func=func)
        if name == "check":
            cmd.add_argument("--max-per-kind", type=int, default=20,
                             help="problems printed per file, column and kind")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        return int(args.func(args))
    except NodeError as exc:
        print(f"bridgestat-node: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
