"""`bridgestat`: the command for coordinators and researchers."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridgestat.coordinator.cli import (
    query as cli_query,  # the kinds' arguments: a static table, no pydantic
)

# Only the standard library at import time: `bridgestat --help` must start fast. pandas,
# grpc, cryptography, scipy and matplotlib are imported by the commands that use them.
if TYPE_CHECKING:
    import pandas as pd

    from bridgestat.coordinator.api import Network
    from bridgestat.coordinator.client.network_client import CallLog

EXIT_OK = 0  # every member answered
EXIT_USAGE = 2  # a usage, file or input error (argparse's own usage errors too)
EXIT_PARTIAL = 3  # some members failed; the rest were pooled
EXIT_NONE = 4  # no member answered, or every member refused
EXIT_PIPE = 141  # stdout's reader went away (128 + SIGPIPE, as the shell reports it)
LANGUAGES = ("en", "nl")  # the reports' languages (coordinator/report/i18n.py)
CERT_WARN_DAYS = 30  # common.certs.WARN_DAYS (cryptography is not imported for --help);
# tests/unit/test_cli_imports.py keeps them equal
EXIT_CODES = """exit codes (info, query, study run):
  0  every member answered
  1  study plan only: an analysis does not fit a member's budget
  2  usage, network file, study file or input error
  3  some members failed or refused (each named on stderr); the rest were pooled
  4  no member answered, or every member refused"""


def _print_frame(frame: pd.DataFrame, output: str) -> None:
    """The table as JSON records, CSV, or aligned text (the default)."""
    if output == "json":
        print(frame.to_json(orient="records", indent=2))
    elif output == "csv":
        frame.to_csv(sys.stdout, index=False)
    else:
        print(frame.to_string(index=False, float_format=lambda v: f"{v:.4g}"))


def _exit_code(log: CallLog) -> int:
    """0, 3 or 4 from the calls made (see EXIT_CODES); each failed member and its reason
    goes to stderr, once."""
    reasons = {f"{member}: {f.code}: {f.message}": None
               for call in log.calls for member, f in call.failures.items()}
    for reason in reasons:
        print(f"bridgestat: member failed: {reason}", file=sys.stderr)
    if any(not call.answered for call in log.calls):
        print("bridgestat: no member answered", file=sys.stderr)
        return EXIT_NONE
    return EXIT_PARTIAL if reasons else EXIT_OK


def _network(args: argparse.Namespace) -> Network:
    """The client of --network with the command's timeout and --insecure."""
    from bridgestat.coordinator.api import Network

    return Network.from_file(args.network, timeout=args.timeout, insecure=args.insecure)


def _info(args: argparse.Namespace) -> int:
    with _network(args) as net, net.recording() as log:
        frame = net.info()
    _print_frame(frame, args.output)
    return _exit_code(log)


def _query(args: argparse.Namespace) -> int:
    """Run one analysis kind (`cli_query` reads its arguments); validated before anything is
    sent, so a refused value spends nothing."""
    if args.network is None:  # may stand before or after KIND, so argparse cannot require it
        raise argparse.ArgumentTypeError("query: the following arguments are required: "
                                         "--network")
    kind, params = cli_query.params(args)
    secure = bool(getattr(params, "secure", False))
    if secure and args.meta:
        raise argparse.ArgumentTypeError(
            f"query {args.kind}: --meta and --secure exclude each other: a meta-analysis "
            "needs each member's estimate, and secure aggregation releases only the NETWORK "
            "sum; drop one of them")
    planned = kind.plan(params)  # a kind's own refusal (ValueError) comes before any query
    with _network(args) as net, net.recording() as log:
        run = net.run_secure if secure else net.run
        results: list[Any] = [run(q.query, cli_query.key_of(args.key, q, len(planned) == 1))
                              for q in planned]  # QueryResult, or SecureResult when secure
    try:
        found, notes = cli_query.output(kind, params, results, args.meta)
    except ValueError as exc:  # no table without answers: the failures say why
        if all(call.answered for call in log.calls):
            raise
        print(f"bridgestat: no table: {exc}", file=sys.stderr)
        return _exit_code(log)
    cli_query.print_tables(found, notes, args.output)
    return _exit_code(log)


def _synth(args: argparse.Namespace) -> int:
    from bridgestat.coordinator.demo import local, synth

    synth.write_network(args.out, members=args.members, seed=args.seed)
    members = local.write_configs(args.out, total_epsilon=args.total_epsilon,
                                  tls=not args.insecure)
    tls = "" if args.insecure else ", ca/, coordinator/ and a certificate per member"
    print(f"wrote {len(members)} members to {args.out} (truth.json, network.yaml, "
          f"<member>/node.yaml{tls})")
    return 0


def _study_plan(args: argparse.Namespace) -> int:
    from bridgestat.coordinator.studies import runner as study
    from bridgestat.coordinator.studies.studyfile import load_study

    checked = load_study(args.study)
    with _network(args) as net:
        the_plan = study.plan(checked, net)
    print(the_plan.format())
    return 0 if all(c.affordable for c in the_plan.costs) else 1


def _study_run(args: argparse.Namespace) -> int:
    """Run the study; the exit code says whether every member answered every call (0), some
    failed (3) or none answered (4; the study's own refusal names why)."""
    from bridgestat.coordinator.studies import runner as study
    from bridgestat.coordinator.studies.studyfile import StudyError, load_study

    checked = load_study(args.study)
    with _network(args) as net, net.recording() as log:
        try:
            study.run(checked, net, args.out, run_id=args.run_id)
        except StudyError as exc:
            if not log.calls or log.calls[-1].answered:
                raise
            print(f"bridgestat: {exc}", file=sys.stderr)  # e.g. no member reachable
    code = _exit_code(log)
    if args.report and code != EXIT_NONE:
        print(f"== Report: {_report_from(args.out / 'results.json', args.out / 'report.html')}")
    return code


def _report_from(results: Path, out: Path, lang: str = "en") -> Path:
    from bridgestat.coordinator.report import (
        study_report as report,  # matplotlib only when a report is written
    )
    from bridgestat.coordinator.studies.results_doc import load_results

    return report.write_report(load_results(results), out, lang=lang)


def _report(args: argparse.Namespace) -> int:
    """The network's report, or with --member one member's (HTML, and PDF with --pdf)."""
    if args.member is None:
        if args.pdf:
            raise argparse.ArgumentTypeError("report: --pdf needs --member (the network "
                                             "report is HTML only)")
        out = args.out or args.results.with_name("report.html")
        print(f"wrote {_report_from(args.results, out, args.lang)}")
        return 0
    from bridgestat.coordinator.report.member_report import write_member_report
    from bridgestat.coordinator.studies.results_doc import load_results

    out = args.out or args.results.parent
    html = write_member_report(load_results(args.results), args.member, args.lang, out,
                               pdf=args.pdf)
    pdf = f" and {html.with_suffix('.pdf')}" if args.pdf else ""
    print(f"wrote {html}{pdf}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    """Synthesize a network, start its nodes, run the standard effect study, write the
    report, stop the nodes."""
    import json
    import tempfile

    from bridgestat.coordinator.api import Network
    from bridgestat.coordinator.demo import local, synth
    from bridgestat.coordinator.studies import runner as study
    from bridgestat.coordinator.studies.studyfile import load_study

    out = args.out or Path(tempfile.mkdtemp(prefix="bridgestat-demo-"))
    print(f"== Writing a synthetic network of {args.members} members to {out}")
    synth.write_network(out, members=args.members, seed=args.seed)
    names = [m["name"] for m in json.loads((out / "truth.json").read_text())["members"]]
    connect = names[1::2] if args.mixed else []  # every second member dials out
    members = local.write_configs(out, tls=not args.insecure, connect=connect)
    mode = "plain text, --insecure" if args.insecure else "mutual TLS"
    processes = []
    if connect:
        hub = next(m.address for m in members if m.connect)
        print(f"== Starting the coordinator on {hub} for {', '.join(connect)} (connect mode)")
        processes.append(local.start_hub(out, hub, out / "coordinator.log",
                                         tls=not args.insecure))
    print(f"== Starting {len(members)} nodes on loopback ({mode})")
    try:
        processes += local.start_nodes(members, out)
    except BaseException:
        local.stop_nodes(processes)
        raise
    try:
        standard = load_study(study.STANDARD_STUDY)
        with Network.from_file(out / "network.yaml", insecure=args.insecure) as net:
            print(study.plan(standard, net).format())
            study.run(standard, net, out / "study")
            print("\n== Budget after the study\n" + net.info()[
                ["member", "epsilon_spent", "epsilon_remaining", "status"]].to_string(
                    index=False))
    finally:
        local.stop_nodes(processes)
        hub = " and the coordinator" if connect else ""
        print(f"\n== Stopped {len(members)} nodes{hub}; data and ledgers are in {out}")
    report = _report_from(out / "study" / "results.json", out / "study" / "report.html")
    print(f"== Report: {report}\nEvery number carries differentially private noise; the "
          "standard errors and intervals include it.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bridgestat", description=__doc__, epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="every member: reachable, schema, budget",
                          epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    query = sub.add_parser("query", help="run one analysis (KIND) on every member and pool "
                           "it", description="Run one analysis kind on every member and pool "
                           "it: `bridgestat query KIND --help` lists its arguments. The "
                           "options below may also follow KIND.", epilog=EXIT_CODES,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    _network_options(info, suppress=False, required=True)
    info.set_defaults(func=_info)
    _network_options(query, suppress=False)
    cli_query.add_shared(query, suppress=False)
    cli_query.add_parsers(query, _query_options, EXIT_CODES)
    query.set_defaults(func=_query)

    syn = sub.add_parser("synth", help="write a synthetic network with known truth")
    syn.add_argument("--members", type=int, default=5)
    syn.add_argument("--seed", type=int, default=1)
    syn.add_argument("--out", type=Path, required=True)
    syn.add_argument("--total-epsilon", type=float, default=50.0)
    syn.add_argument("--insecure", action="store_true",
                     help="plain-text configs (no CA or certificates)")
    syn.set_defaults(func=_synth)

    plan = sub.add_parser("study", help="plan or run a study file").add_subparsers(
        dest="study_command", required=True)
    for name, func, text in (("plan", _study_plan, "check a study and show its cost per member"),
                             ("run", _study_run, "run a study and save every result")):
        cmd = plan.add_parser(name, help=text, epilog=EXIT_CODES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
        cmd.add_argument("study", type=Path, help="study file (YAML)")
        cmd.add_argument("--network", type=Path, required=True, help="network file (YAML)")
        cmd.add_argument("--timeout", type=float, default=30.0, help="deadline per call (s)")
        _insecure_flag(cmd)
        cmd.set_defaults(func=func)
        if name == "run":
            cmd.add_argument("--out", type=Path, required=True, help="results folder")
            cmd.add_argument("--run-id", help="reuse a run's idempotency keys: what the "
                             "nodes already answered is replayed, free")
            cmd.add_argument("--report", action="store_true", help="also write report.html")

    rep = sub.add_parser("report", help="write the HTML report of saved study results",
                         description="The network's report of a study run (report.html), or "
                         "with --member a member's own short report (member-NAME.html, and "
                         "its PDF with --pdf). Nothing is queried: no budget is spent.")
    rep.add_argument("results", type=Path, help="results.json of a study run")
    rep.add_argument("--out", type=Path, help="HTML file or folder (default: report.html, or "
                     "member-NAME.html, beside the results)")
    rep.add_argument("--lang", choices=LANGUAGES, default="en", help="language (default: en)")
    rep.add_argument("--member", metavar="NAME", help="a member's report instead of the "
                     "network's")
    rep.add_argument("--pdf", action="store_true", help="with --member: also print the PDF "
                     "beside the HTML (needs chromium)")
    rep.set_defaults(func=_report)

    demo = sub.add_parser("demo", help="local network + the standard effect study + report")
    demo.add_argument("--members", type=int, default=5)
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument("--out", type=Path)
    demo.add_argument("--insecure", action="store_true",
                      help="run the demo in plain text instead of mutual TLS")
    demo.add_argument("--mixed", action="store_true",
                      help="every second member's node connects out to `bridgestat "
                      "coordinator serve` instead of listening")
    demo.set_defaults(func=_demo)
    _ca_parsers(sub)
    _coordinator_parsers(sub)
    web = sub.add_parser("web", help="the coordinators' workspace in the browser (prints a URL "
                         "with an access token)")
    web.add_argument("--network", type=Path, required=True, help="network file (YAML)")
    web.add_argument("--lang", choices=["en", "nl"], default="en", help="default language")
    web.add_argument("--host", default="127.0.0.1", help="beyond loopback only with TLS")
    web.add_argument("--port", type=int, default=8765, help="0: any free port")
    web.add_argument("--data-dir", type=Path, default=Path("bridgestat-web"),
                     help="runs, results, member contacts and the spend log")
    web.add_argument("--certfile", help="TLS certificate (PEM) for https")
    web.add_argument("--keyfile", help="TLS private key (PEM) for https")
    web.add_argument("--user", help="name written in the spend log (default: the session)")
    _insecure_flag(web)
    web.set_defaults(func=_web)
    _witness_parsers(sub)
    return parser


def _web(args: argparse.Namespace) -> int:
    from bridgestat.coordinator.web.app import serve  # starlette and uvicorn only here

    serve(args.network, lang=args.lang, host=args.host, port=args.port,
          data_dir=args.data_dir, certfile=args.certfile, keyfile=args.keyfile,
          user=args.user, insecure=args.insecure)
    return 0


def _witness_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`bridgestat witness check`: every member's audit head against the witness file."""
    text = ("ask every member for its audit log's head and compare it with the heads "
            "witnessed so far: names each member whose log was cut back or rewritten")
    check = sub.add_parser("witness", help="the witness of the members' audit logs"
                           ).add_subparsers(dest="witness_command", required=True
                                            ).add_parser("check", help=text, description=text)
    check.add_argument("--network", type=Path, required=True, help="network file (YAML)")
    check.add_argument("--witness", type=Path, help="witness file (default: "
                       "<network file>.witness.jsonl beside it)")
    check.add_argument("--timeout", type=float, default=10.0, help="deadline per call (s)")
    _insecure_flag(check)
    check.set_defaults(func=_witness_check)


def _witness_check(args: argparse.Namespace) -> int:
    from bridgestat.coordinator.client import witness

    return witness.check_network(args.network, args.witness, args.timeout, args.insecure)


def _coordinator_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`bridgestat coordinator serve`: the service that connect-mode nodes dial."""
    text = ("serve the coordinator for members whose nodes connect out (via: hub in the "
            "network file); researchers' clients reach those members through it")
    serve = sub.add_parser("coordinator", help="the coordinator's service").add_subparsers(
        dest="coordinator_command", required=True).add_parser("serve", help=text,
                                                              description=text)
    serve.add_argument("--network", type=Path, required=True,
                       help="network file: its tls is the coordinator's identity, its "
                       "members via hub may connect")
    serve.add_argument("--listen", help="host:port to listen on (default: every interface, "
                       "at the port of the network file's hub)")
    serve.add_argument("--allow", action="append", metavar="NAME",
                       help="a certificate name (researcher identity) that may query members "
                       "through this coordinator; repeat for several (default: coordinator)")
    serve.add_argument("--grace", type=float, default=30.0,
                       help="seconds to finish replies still owed after SIGTERM")
    serve.add_argument("--insecure", action="store_true",
                       help="serve plain text when the network file has no tls (local demos)")
    serve.set_defaults(func=_coordinator_serve)


def _coordinator_serve(args: argparse.Namespace) -> int:
    import logging

    from bridgestat.coordinator import hub  # the asyncio server only when serving

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    hub.serve(args.network, args.listen, tuple(args.allow or hub.DEFAULT_ALLOW),
              insecure=args.insecure, grace=args.grace)
    return 0


def _network_options(cmd: argparse.ArgumentParser, suppress: bool,
                     required: bool = False) -> None:
    """--network, --timeout, --json/--csv and --insecure. With `suppress` (a query kind's own
    parser) they have no defaults, so that given before KIND they are not overwritten."""
    default = argparse.SUPPRESS if suppress else None
    cmd.add_argument("--network", type=Path, required=required, default=default,
                     help="network file (YAML)")
    cmd.add_argument("--timeout", type=float, default=argparse.SUPPRESS if suppress else 10.0,
                     help="deadline per call (s)")
    output = cmd.add_mutually_exclusive_group()
    output.add_argument("--json", dest="output", action="store_const", const="json",
                        default=argparse.SUPPRESS if suppress else "table",
                        help="print JSON records (several tables: an object of them by name)")
    output.add_argument("--csv", dest="output", action="store_const", const="csv",
                        default=argparse.SUPPRESS,
                        help="print CSV (a header row, then one row per member; several "
                        "tables: a leading `table` column)")
    cmd.add_argument("--insecure", action="store_true",
                     default=argparse.SUPPRESS if suppress else False,
                     help="allow plain text when the network file has no tls (local demos)")


def _query_options(cmd: argparse.ArgumentParser, suppress: bool) -> None:
    _network_options(cmd, suppress)
    cli_query.add_shared(cmd, suppress)


def _insecure_flag(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument("--insecure", action="store_true",
                     help="allow plain text when the network file has no tls (local demos)")


def _ca_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`bridgestat ca init|issue|csr|sign|renew|status`: the network's certificate authority."""
    cas = sub.add_parser("ca", help="the network CA: certificates for mutual TLS"
                         ).add_subparsers(dest="ca_command", required=True)
    init = cas.add_parser("init", help="create the CA key and certificate in --dir")
    issue = cas.add_parser("issue", help="make a key and certificate for --name (the key is "
                           "made here: prefer csr + sign for a member)")
    csr = cas.add_parser("csr", help="at a member: make its key and a signing request")
    sign = cas.add_parser("sign", help="at the CA: sign a member's request (.csr)")
    renew = cas.add_parser("renew", help="replace a certificate before it expires, with a new "
                           "key", description="With --dir (at the CA, for a certificate "
                           "whose key the CA made, e.g. the coordinator's): a new key and "
                           "certificate for the same name replace both files. With --out (at "
                           "a member): a new key and a signing request for the name of the "
                           "current certificate, to send to the CA (`bridgestat ca sign`); "
                           "then put the signed certificate and the new key in place of the "
                           "old and send the node SIGHUP.")
    status = cas.add_parser("status", help="days left on the CA's and each certificate",
                            description="Days until the CA's certificate, every certificate in "
                            "--dir and those named expire; exit 1 when one has expired or "
                            f"has {CERT_WARN_DAYS} days or fewer left.")
    for cmd in (init, issue, sign):
        cmd.add_argument("--dir", type=Path, required=True, help="the CA folder")
    for cmd in (issue, csr):
        cmd.add_argument("--name", required=True, help="the member's name in the network "
                         "file (or 'coordinator')")
    issue.add_argument("--out", type=Path, help="folder for <name>.key and <name>.pem")
    csr.add_argument("--out", type=Path, required=True, help="folder for <name>.key and .csr")
    sign.add_argument("--csr", type=Path, required=True, help="the member's request")
    sign.add_argument("--out", type=Path, help="folder for <name>.pem (default: the .csr's)")
    renew.add_argument("--cert", type=Path, required=True, help="the certificate to renew")
    renew.add_argument("--key", type=Path, help="with --dir: its key, replaced too (default: "
                       "<name>.key beside the certificate)")
    where = renew.add_mutually_exclusive_group(required=True)
    where.add_argument("--dir", type=Path, help="the CA folder: renew here, in place")
    where.add_argument("--out", type=Path, help="at the member: folder for the new <name>.key "
                       "and <name>.csr (not the folder of the key in use)")
    status.add_argument("--dir", type=Path, required=True, help="the CA folder")
    status.add_argument("--cert", type=Path, action="append", default=[],
                        help="another certificate to include (repeat for several)")
    for cmd, func in ((init, _ca_init), (issue, _ca_issue), (csr, _ca_csr), (sign, _ca_sign),
                      (renew, _ca_renew), (status, _ca_status)):
        cmd.set_defaults(func=func)


def _ca_init(args: argparse.Namespace) -> int:
    from bridgestat.coordinator import ca

    cert = ca.init_ca(args.dir)
    print(f"created the network CA: {cert} (give to every member) and {args.dir / ca.CA_KEY} "
          "(keep secret)")
    return 0


def _ca_issue(args: argparse.Namespace) -> int:
    from bridgestat.coordinator import ca

    issued = ca.issue(args.dir, args.name, args.out)
    print(f"issued {issued.cert} and its key {issued.key} for {args.name}")
    return 0


def _ca_csr(args: argparse.Namespace) -> int:
    from bridgestat.coordinator import ca

    key, request = ca.make_csr(args.name, args.out)
    print(f"wrote {key} (keep it here) and {request} (send it to the network's CA)")
    return 0


def _ca_sign(args: argparse.Namespace) -> int:
    from bridgestat.coordinator import ca

    cert = ca.sign_csr(args.dir, args.csr, args.out)
    print(f"signed {cert} (send it back with {args.dir / ca.CA_CERT})")
    return 0


def _ca_renew(args: argparse.Namespace) -> int:
    from bridgestat.common import certs
    from bridgestat.coordinator import ca

    if args.dir is None:
        key, request = ca.renew_request(args.cert, args.out)
        print(f"wrote a new key {key} and request {request} for the name in {args.cert}: send "
              f"the .csr to the network's CA (`bridgestat ca sign`), put the returned "
              f"certificate and this key in place of {args.cert} and its key, then send the "
              "node SIGHUP")
        return 0
    renewed = ca.renew(args.dir, args.cert, args.key)
    found = certs.file_expiry(renewed.cert)
    print(f"renewed {renewed.cert} and its key {renewed.key} for {renewed.name}: valid until "
          f"{found.not_after:%Y-%m-%d} ({found.days} days); a serving node uses them after "
          "SIGHUP, the coordinator (`coordinator serve`, the API) from its next start")
    return 0


def _ca_status(args: argparse.Namespace) -> int:
    from bridgestat.coordinator import ca

    found = ca.status(args.dir, tuple(args.cert))
    for one in found:
        print(one.describe())
    return 1 if any(one.warning for one in found) else 0


def main(argv: list[str] | None = None) -> int:
    """Run the command; `bridgestat ... | head -1` ends quietly when the reader stops."""
    try:
        try:
            code = _run(argv)
        finally:  # also after --help's SystemExit: a closed pipe shows here, not at exit
            sys.stdout.flush()
    except BrokenPipeError:
        return _reader_gone()
    return code


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:
        raise
    except (argparse.ArgumentTypeError, ValueError, RuntimeError, TimeoutError,
            OSError) as exc:  # NetworkFileError, StudyError and ReportError are ValueErrors
        print(f"bridgestat: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _reader_gone() -> int:
    """The reader of stdout closed it (`| head -1`): point stdout at /dev/null so that the
    interpreter's final flush does not fail again, and exit as a process ended by SIGPIPE."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return EXIT_PIPE


if __name__ == "__main__":
    sys.exit(main())
