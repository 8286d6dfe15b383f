"""`bridgestat-node`: the command member IT uses (check, serve, health, budget, audit)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from bridgestat.node import audit, sources
from bridgestat.node.config import NodeConfig, load_config
from bridgestat.node.errors import NodeError
from bridgestat.node.ledger import PERIODS, Charge, Ledger, Snapshot
from bridgestat.node.loss import Epsilon, Loss
from bridgestat.node.policy import load_policy
from bridgestat.node.schema import Schema


def _check_start_up(config: NodeConfig, schema: Schema) -> None:
    """What `serve` checks before it loads data: the policy file and the certificates
    (each raises ConfigError naming file and key)."""
    from bridgestat.node.tls import load_server_tls  # imports grpc only when needed

    if config.policy_path is not None:
        load_policy(config, schema)
        print(f"policy {config.policy_path}: ok")
    if config.tls is None:
        print("tls: not configured (serve needs --insecure: plain text, local demos only)")
        return
    load_server_tls(config)
    print(f"tls {config.tls.cert}: ok (signed by {config.tls.ca.name}, callers allowed: "
          f"{', '.join(config.tls.allow)})")


def _check(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    schema = config.schema()
    print(f"config {config.source}: ok (node {config.node_id}, schema {schema.name} "
          f"{schema.version})")
    _check_start_up(config, schema)
    print(f"data {sources.describe(config.data)}:", flush=True)
    report = sources.check(config.data, schema, config.source)
    print(report.format(max_per_kind=args.max_per_kind))
    return 0 if report.servable else 1


def _serve(args: argparse.Namespace) -> int:
    from bridgestat.node.app import serve  # imports grpc only when serving

    serve(args.config, insecure=args.insecure)
    return 0


def _budget(args: argparse.Namespace) -> int:
    """Spent and remaining loss of the dataset, and of the current period when capped."""
    config = load_config(args.config)
    policy = load_policy(config, config.schema())
    ledger = Ledger(config.ledger_path, config.budget.dataset, Epsilon.of(policy.total_epsilon),
                    config.budget.delta, period=policy.per_period)
    state = ledger.state()
    charges = ledger.history()
    rho = f" (of which rho {float(state.spent_loss.rho):.6g} at delta {state.delta:g})" \
        if state.spent_loss.rho else ""
    print(f"dataset {state.dataset}: spent epsilon {state.spent} of {state.total}{rho}, "
          f"remaining {state.total_remaining}; largest per query "
          f"{policy.max_epsilon_per_query:g}; {len(charges)} queries charged")
    held = [c for c in charges if c.state == "reserved"]
    if held:
        print(f"of these, {len(held)} interrupted before their release (charged, nothing "
              f"released, not in the audit log; a retry with the same key answers without "
              f"charging again): {sum((c.loss for c in held), Loss())}")
    if state.period is not None:
        print(f"{state.period.period} {state.period_name} (UTC): spent epsilon "
              f"{state.period_spent} of {state.period.epsilon}, remaining "
              f"{state.period_remaining}")
    if policy.source:
        print(f"policy {policy.source}")
    return 0


def _audit_verify(args: argparse.Namespace) -> int:
    """Exit 0 when the chain (and the ledger check) holds, 1 naming the first bad line or
    the first key whose loss differs from the ledger's."""
    config = load_config(args.config)
    path = audit.audit_path(config)
    ledger = None if args.no_ledger else _ledger_snapshot(config)
    result = audit.verify(path, ledger, config.budget.dataset, args.anchor)
    if not result.ok:
        print(f"audit log {path}: {result.problem} ({result.count} entries verified before "
              f"it; last good hash {result.last_hash})")
        return 1
    checked = "" if ledger is None else \
        (f"; every committed charge of ledger {config.ledger_path} is logged once as released "
         f"with its loss, and the released entries add up to the ledger's totals, overall "
         f"and per period ({result.released or Loss()}){_held(result.held)}")
    print(f"audit log {path}: {result.count} entries, chain intact, last hash "
          f"{result.last_hash}{checked}")
    return 0


def _held(held: tuple[Charge, ...]) -> str:
    if not held:
        return ""
    return (f"; the ledger also holds {len(held)} reservations of interrupted queries "
            f"({sum((c.loss for c in held), Loss())}; nothing released, so not logged)")


def _ledger_snapshot(config: NodeConfig) -> Snapshot | None:
    if not config.ledger_path.exists():
        return None
    return Ledger(config.ledger_path, config.budget.dataset,
                  Epsilon.of(config.budget.total_epsilon), config.budget.delta).snapshot()


def _audit_show(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    path = audit.audit_path(config)
    result = audit.verify(path)
    chain = "intact" if result.ok else f"BROKEN ({result.problem}; run audit verify)"
    print(f"audit log {path}: {result.count} entries verified, chain {chain}")
    print(audit.format_summary(audit.summarize(audit.entries(path), args.period)))
    print("refused calls per caller and reason (nothing charged):")
    print(audit.format_refusals(audit.summarize_refusals(audit.entries(path))))
    dataset, delta = config.budget.dataset, config.budget.delta
    released = [e for e in audit.entries(path)
                if e.get("dataset") == dataset and e.get("outcome") == "released"]
    loss = audit.released_loss(released, dataset)
    print(f"dataset {dataset}: {len(released)} queries released, {loss}: spent epsilon "
          f"{loss.epsilon_at(delta)} (delta {delta:g}), as `bridgestat-node budget` counts it")
    return 0


def _add_audit(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "verify or summarize the audit log of every query received"
    actions = sub.add_parser("audit", help=text, description=text).add_subparsers(
        dest="action", required=True)
    verify = actions.add_parser("verify", help="check the hash chain and the ledger",
                                description="Recompute the hash chain; name the first edited, "
                                "removed or reordered entry; check that every committed ledger "
                                "charge has exactly one released entry with its loss, and that "
                                "the released entries add up to the ledger's totals, overall "
                                "and per period.")
    verify.add_argument("--no-ledger", action="store_true",
                        help="do not check the log against the budget ledger")
    verify.add_argument("--anchor", default="", help="a hash printed by an earlier verify and "
                        "kept elsewhere; it must still be in the chain")
    show = actions.add_parser("show", help="queries and loss per caller and period",
                              description="Queries released, replayed, refused and failed, "
                              "and the loss charged, per caller and period (UTC); then the "
                              "refused calls per caller and reason (allow-list, probe, "
                              "schema, policy, budget, ...).")
    show.add_argument("--period", choices=PERIODS, default="month")
    for cmd, func in ((verify, _audit_verify), (show, _audit_show)):
        cmd.add_argument("--config", type=Path, required=True, help="node config (YAML)")
        cmd.set_defaults(func=func)


def _health(args: argparse.Namespace) -> int:
    """Exit 0 when the node answers grpc.health.v1 SERVING, 1 otherwise."""
    from bridgestat.node.probe import ProbeIdentity, check_health  # imports grpc

    if (args.cert is None) != (args.key is None):
        print("bridgestat-node health: --cert and --key go together", file=sys.stderr)
        return 2
    identity = ProbeIdentity(args.cert, args.key) if args.cert is not None else None
    result = check_health(load_config(args.config), address=args.address, identity=identity,
                          service=args.service, timeout=args.timeout)
    print(result.message)
    return 0 if result.serving else 1


def _add_health(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "probe a running node: grpc.health.v1 Check over mutual TLS (exit 0 SERVING, 1 not)"
    health = sub.add_parser("health", help=text, description=text + "; by default as the "
                            "node's own certificate, dialling its listen address (a wildcard "
                            "host: loopback). For container health checks and monitors.")
    health.add_argument("--config", type=Path, required=True, help="node config (YAML)")
    health.add_argument("--address", help="host:port to dial instead of the config's listen")
    health.add_argument("--cert", type=Path, help="a probe certificate (a name on tls.probe) "
                        "instead of the node's own")
    health.add_argument("--key", type=Path, help="the probe certificate's key")
    health.add_argument("--service", default="", help="the service to check (default: the "
                        "whole node; bridgestat.v1.NodeService for the query service)")
    health.add_argument("--timeout", type=float, default=5.0, help="seconds (default 5)")
    health.set_defaults(func=_health)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bridgestat-node", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func, text in (("check", _check, "validate the config and the data"),
                             ("serve", _serve, "serve the node over gRPC"),
                             ("budget", _budget, "show spent and remaining privacy loss")):
        cmd = sub.add_parser(name, help=text, description=text)
        cmd.add_argument("--config", type=Path, required=True, help="node config (YAML)")
        cmd.set_defaults(func=func)
        if name == "serve":
            cmd.add_argument("--insecure", action="store_true",
                             help="serve plain text when the config has no tls (local demos "
                             "only; with tls in the config, mutual TLS is used regardless)")
        if name == "check":
            cmd.add_argument("--max-per-kind", type=int, default=20,
                             help="problems printed per file, column and kind")
    _add_health(sub)
    _add_audit(sub)
    return parser


EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a process ended by SIGPIPE


def main(argv: list[str] | None = None) -> int:
    """Run one command. Its output piped into a reader that stops early (`| head`) ends the
    command quietly with exit code 141, as SIGPIPE ends other Unix tools (`set -o pipefail`
    sees it), without a BrokenPipeError traceback."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        code = int(args.func(args))
        sys.stdout.flush()  # a closed pipe shows here, not at exit where it cannot be caught
        return code
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except NodeError as exc:
        print(f"bridgestat-node: {exc}", file=sys.stderr)
        return 2


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush of what is still
    buffered cannot fail again at exit."""
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, sys.stdout.fileno())
    os.close(null)


if __name__ == "__main__":
    sys.exit(main())
