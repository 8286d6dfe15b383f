"""`bridgestat-node`: the command member IT uses (check, serve, health, budget, audit)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from bridgestat.node.errors import NodeError

# Only light modules at import time: `bridgestat-node --help` must start fast. pandas,
# opendp, pyarrow, grpc and yaml are imported by the commands that use them.
PERIODS = ("year", "quarter", "month")  # ledger.PERIODS (the ledger imports sqlite3 and
# decimal, a third of --help's start-up); tests/unit/test_cli_imports.py keeps them equal
if TYPE_CHECKING:
    from bridgestat.node import audit
    from bridgestat.node.config import NodeConfig
    from bridgestat.node.ledger import Charge, Snapshot
    from bridgestat.node.schema import Schema


def _check_start_up(config: NodeConfig, schema: Schema) -> None:
    """What `serve` checks before it loads data: the policy file and the certificates
    (each raises ConfigError naming file and key)."""
    from bridgestat.node.policy import load_policy
    from bridgestat.node.tls import load_server_tls  # imports grpc only when needed

    if config.policy_path is not None:
        load_policy(config, schema)
        print(f"policy {config.policy_path}: ok")
    if config.tls is None:
        print("tls: not configured (serve needs --insecure: plain text, local demos only)")
        return
    tls = load_server_tls(config)
    print(f"tls {config.tls.cert}: ok (signed by {config.tls.ca.name}, callers allowed: "
          f"{', '.join(config.tls.allow)})")
    for found in tls.expiries().values():
        print(found.describe())


def _check(args: argparse.Namespace) -> int:
    from bridgestat.node import sources
    from bridgestat.node.config import load_config

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
    from bridgestat.node.config import load_config
    from bridgestat.node.ledger import Ledger
    from bridgestat.node.loss import Epsilon, Loss
    from bridgestat.node.policy import load_policy

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
    _print_expiry(config)
    return 0


def _print_expiry(config: NodeConfig) -> None:
    """Days left on the node's and the CA's certificates (a warning from WARN_DAYS on)."""
    from bridgestat.common.certs import CertificateError, file_expiry

    if config.tls is None:
        return
    for path, what in ((config.tls.cert, "certificate"), (config.tls.ca, "CA certificate")):
        try:
            print(file_expiry(path, what).describe())
        except CertificateError as exc:
            print(f"{what}: {exc}")


def _audit_verify(args: argparse.Namespace) -> int:
    """Exit 0 when the chain (and the ledger check) holds, 1 naming the first bad line or
    the first key whose loss differs from the ledger's."""
    from bridgestat.node import audit
    from bridgestat.node.config import load_config
    from bridgestat.node.loss import Loss

    config = load_config(args.config)
    path = audit.audit_path(config)
    ledger = None if args.no_ledger else _ledger_snapshot(config)
    witnessed = _witnessed(args.witness, config.node_id) if args.witness else ()
    result = audit.verify(path, ledger, config.budget.dataset, args.anchor, witnessed)
    if not result.ok:
        print(f"audit log {path}: {result.problem} ({result.count} entries verified before "
              f"it; last good hash {result.last_hash})")
        return 1
    checked = "" if ledger is None else \
        (f"; every committed charge of ledger {config.ledger_path} is logged once as released "
         f"with its loss, and the released entries add up to the ledger's totals, overall "
         f"and per period ({result.released or Loss()}){_held(result.held)}")
    seen = f"; the {len(witnessed)} heads the coordinator witnessed are in the chain" \
        if witnessed else ""
    print(f"audit log {path}: {result.count} entries, chain intact, last hash "
          f"{result.last_hash}{checked}{seen}")
    return 0


def _witnessed(path: Path, node_id: str) -> tuple[audit.Head, ...]:
    """The heads of this node in a coordinator's witness file (lines of others skipped)."""
    from bridgestat.common import witness
    from bridgestat.node import audit

    try:
        seen = witness.of_member(path, node_id)
    except witness.WitnessError as exc:
        raise NodeError(str(exc)) from exc
    if not seen:
        raise NodeError(f"--witness {path}: no heads witnessed for node {node_id!r} (the "
                        "coordinator's witness file, or its lines for this node)")
    return tuple(dict.fromkeys(audit.Head(w.seq, w.hash) for w in seen))  # each head once


def _backup(args: argparse.Namespace) -> int:
    """Copy ledger and audit log consistently while the node serves."""
    from bridgestat.node import backup
    from bridgestat.node.config import load_config

    manifest = backup.backup(load_config(args.config), args.out)
    print(f"backup {args.out}: ledger ({manifest.charges} charges, spent {manifest.spent_loss}: "
          f"epsilon {manifest.epsilon_spent:.6g}) and audit log (seq {manifest.audit_seq}, "
          f"hash {manifest.audit_hash}); manifest {args.out / backup.MANIFEST_FILE}")
    if manifest.verified != "ok":
        print(f"warning: the copy, like the node, does not pass audit verify: "
              f"{manifest.verified}", file=sys.stderr)
    return 0


def _restore(args: argparse.Namespace) -> int:
    """Restore a backup; refused (exit 1) when older than the node or the witness."""
    from bridgestat.node import backup
    from bridgestat.node.config import load_config

    try:
        done = backup.restore(load_config(args.config), args.source, args.witness, args.force)
    except backup.RestoreRefused as exc:
        print(f"bridgestat-node: {exc}", file=sys.stderr)
        return 1
    for reason in done.overridden:
        print(f"warning: restored with --force although {reason}", file=sys.stderr)
    kept = "".join(f"; previous file kept as {path}" for path in done.kept)
    print(f"restored {args.source} (taken {done.manifest.created}, audit seq "
          f"{done.manifest.audit_seq}, spent {done.manifest.spent_loss}){kept}")
    return 0


def _add_backup(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    text = "copy the ledger and audit log consistently while the node serves"
    copy = sub.add_parser("backup", help=text, description=text + " (SQLite's online backup; "
                          "queries wait while the copy is taken).")
    copy.add_argument("--out", type=Path, required=True, help="a new or empty folder")
    copy.set_defaults(func=_backup)
    text = "restore a backup (stop the node first)"
    restore = sub.add_parser("restore", help=text, description=text + ". Refused when the "
                             "backup is older than the node's own ledger and audit log or than "
                             "the coordinator's witness: an older ledger forgets spent budget.")
    restore.add_argument("--from", dest="source", type=Path, required=True,
                         help="a folder written by `bridgestat-node backup`")
    restore.add_argument("--witness", type=Path, help="the coordinator's witness file")
    restore.add_argument("--force", action="store_true",
                         help="restore even an older backup (says why it would be refused)")
    restore.set_defaults(func=_restore)
    for cmd in (copy, restore):
        cmd.add_argument("--config", type=Path, required=True, help="node config (YAML)")


def _held(held: tuple[Charge, ...]) -> str:
    from bridgestat.node.loss import Loss

    if not held:
        return ""
    return (f"; the ledger also holds {len(held)} reservations of interrupted queries "
            f"({sum((c.loss for c in held), Loss())}; nothing released, so not logged)")


def _ledger_snapshot(config: NodeConfig) -> Snapshot | None:
    from bridgestat.node.ledger import Ledger
    from bridgestat.node.loss import Epsilon

    if not config.ledger_path.exists():
        return None
    return Ledger(config.ledger_path, config.budget.dataset,
                  Epsilon.of(config.budget.total_epsilon), config.budget.delta).snapshot()


def _audit_show(args: argparse.Namespace) -> int:
    from bridgestat.node import audit
    from bridgestat.node.config import load_config

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
    verify.add_argument("--witness", type=Path, help="a witness file from the coordinator "
                        "(or its lines for this node): every head witnessed must still be in "
                        "the chain, and the chain must reach the highest")
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
    from bridgestat.node.config import load_config
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
    _add_backup(sub)
    return parser


EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a process ended by SIGPIPE


def main(argv: list[str] | None = None) -> int:
    """Run one command. Its output piped into a reader that stops early (`| head`) ends the
    command quietly with exit code 141, as SIGPIPE ends other Unix tools (`set -o pipefail`
    sees it), without a BrokenPipeError traceback."""
    args = build_parser().parse_args(argv)
    from bridgestat.node import arrowless

    # `check` reads the data with pandas, here without Arrow (-60 MiB); `serve` never
    # imports pandas (its data are loaded in a child process, node/loader.py)
    if argv is None and args.func is _check and arrowless.is_node_program():
        arrowless.import_pandas_without_arrow()  # first, before any node module
    import logging

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
