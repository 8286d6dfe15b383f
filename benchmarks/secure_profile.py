"""Where a member's CPU goes in a secure query (issue 13): real node processes, real gRPC.

K members served by `node_host.py`-style processes (each member its own gRPC server, engine,
SQLite ledger and audit log; mutual TLS), driven by the real coordinator (`Network.mean(...,
secure=True)`). In the host processes every SecureAggregationService handler runs under one
lock and is timed with the thread's CPU clock, per round and for the parts of the round that
are not gRPC (the member's protocol steps, the noise share, the ledger and audit writes);
with `--cprofile` the handlers also run under cProfile with the process-CPU timer (slower:
the profiler's own cost inflates small Python calls), and the stats go to `--out`.
Prints per member per session: the process CPU of the hosts (all of it: gRPC, TLS, handlers),
the handlers' CPU per round and per part, and the coordinator's CPU per query.
Usage: python benchmarks/secure_profile.py [--nodes 25] [--queries 15] [--hosts 2]
       [--cprofile] [--out /tmp/secure-profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: import benchmarks.* from the checkout
    sys.path.insert(0, str(ROOT))

# -- the host side: node_host.py with timed handlers -------------------------------------------

_LOCK = threading.Lock()
_CPU: dict[str, float] = defaultdict(float)
_CALLS: dict[str, int] = defaultdict(int)
_PROFILE: list[cProfile.Profile | None] = [None]


def _add(name: str, seconds: float) -> None:
    _CPU[name] += seconds
    _CALLS[name] += 1


def _timed(owner: Any, name: str, label: str) -> None:
    """Replace `owner.name` by the same function timed on the thread's CPU clock."""
    inner: Callable[..., Any] = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.thread_time()
        try:
            return inner(*args, **kwargs)
        finally:
            _add(label, time.thread_time() - start)
    setattr(owner, name, timed)


def _instrument(cprofile: bool) -> None:
    from bridgestat.node import audit, ledger, secagg_member, secure, secure_service

    answer = secure_service.answer  # one round, for a unary call or a Session message alike

    def handler(node: Any, request: Any, caller: str) -> Any:
        with _LOCK:  # one handler at a time: cProfile follows one thread at a time
            profile = _PROFILE[0]
            start = time.thread_time()
            if profile is not None:
                profile.enable()
            try:
                return answer(node, request, caller)
            finally:
                if profile is not None:
                    profile.disable()
                _add(f"round {type(request).__name__.removesuffix('Request')}",
                     time.thread_time() - start)
    secure_service.answer = handler
    if cprofile:
        _PROFILE[0] = cProfile.Profile(time.process_time)
    for owner, name, label in (
            (secure.SecureNode, "advertise", "  advertise: query check, keys, signature"),
            (secagg_member.SecAggMember, "_share_keys",
             "  share keys: check adverts, Shamir, encrypt"),
            (secagg_member.SecAggMember, "_receive_shares", "  masked input: decrypt shares"),
            (secure.SecureNode, "_values", "  masked input: the engine's sums"),
            (secure, "secure_input", "  masked input: OpenDP noise share"),
            (secagg_member.SecAggMember, "_mask", "  masked input: masks"),
            (ledger.Ledger, "reserve", "  masked input: ledger reserve"),
            (ledger.Ledger, "commit", "  masked input: ledger commit (durable)"),
            (audit.AuditLog, "append", "  masked input: audit append"),
            (ledger.Ledger, "mark_logged", "  masked input: ledger mark logged"),
            (secagg_member.SecAggMember, "_check_signatures",
             "  unmask: check consistency signatures")):
        _timed(owner, name, label)


def _reset(cprofile: bool) -> None:
    with _LOCK:
        _CPU.clear()
        _CALLS.clear()
        if cprofile:
            _PROFILE[0] = cProfile.Profile(time.process_time)


def host(out: Path, cprofile: bool, configs: list[str]) -> None:
    """Serve `configs` like node_host.py; SIGUSR1 starts the measurement; on stop, write
    the handlers' CPU (name, calls, seconds) to `out`.txt and the profile to `out`.prof."""
    from benchmarks import node_host

    _instrument(cprofile)
    signal.signal(signal.SIGUSR1, lambda *_: _reset(cprofile))
    sys.argv = [sys.argv[0], "--tls", *configs]
    try:
        node_host.main()
    finally:
        profile = _PROFILE[0]
        if profile is not None:
            profile.dump_stats(out.with_suffix(".prof"))
        out.with_suffix(".txt").write_text("".join(
            f"{name}\t{_CALLS[name]}\t{_CPU[name]}\n" for name in _CPU))


# -- the driver ----------------------------------------------------------------------------------


def drive(nodes: int, queries: int, hosts: int, cprofile: bool, out: Path) -> None:
    from benchmarks.fanout_scale import cpu_ms
    from bridgestat.coordinator.api import Network
    from bridgestat.coordinator.client.network_file import load_network
    from bridgestat.coordinator.demo import local, synth

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synth.write_network(root, members=nodes, seed=5, sizes=[200] * nodes)
        members = local.write_configs(root, total_epsilon=1e6, max_per_query=1.0)
        spec = load_network(root / "network.yaml")
        chunks = [members[i::hosts] for i in range(min(hosts, nodes))]
        outs = [out.parent / f"{out.name}.host{i}" for i in range(len(chunks))]
        processes = [subprocess.Popen(
            [sys.executable, __file__, "--host", str(o), *(["--cprofile"] if cprofile else []),
             *(str(m.config) for m in chunk)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True) for o, chunk in zip(outs, chunks, strict=True)]
        try:
            for process, chunk in zip(processes, chunks, strict=True):
                line = process.stdout.readline() if process.stdout else ""
                if line.strip() != f"ready {len(chunk)}":
                    raise RuntimeError(f"host did not start: {line!r}")
            pids = [p.pid for p in processes]
            with Network(spec.members[:nodes], timeout=60, tls=spec.tls) as net:
                def secure() -> None:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        frame = net.mean("assessment", "bridge_total", epsilon=0.5, secure=True)
                    status = str(frame.iloc[0]["status"])
                    if not status.startswith("ok"):
                        raise RuntimeError(f"secure mean failed: {status}")
                for _ in range(3):  # warm: channels, TLS sessions, caches
                    secure()
                for pid in pids:
                    os.kill(pid, signal.SIGUSR1)
                time.sleep(0.5)
                load, cpu, hosts_cpu = os.getloadavg()[0], time.process_time(), cpu_ms(pids)
                for _ in range(queries):
                    secure()
                node_ms = (cpu_ms(pids) - hosts_cpu) / queries / nodes
                coordinator_ms = (time.process_time() - cpu) * 1000 / queries
        finally:
            for process in processes:
                if process.stdin:
                    process.stdin.close()
            for process in processes:
                process.wait(60)
    totals: dict[str, float] = defaultdict(float)
    for o in outs:
        for row in o.with_suffix(".txt").read_text().splitlines():
            name, _, seconds = row.split("\t")
            totals[name] += float(seconds)
    sessions = queries * nodes
    print(f"K = {nodes}, {queries} secure means, {len(outs)} hosts, load {load:.1f} -> "
          f"{os.getloadavg()[0]:.1f}{' (cProfile on)' if cprofile else ''}")
    print(f"host process CPU per member per session: {node_ms:.2f} ms; coordinator CPU per "
          f"query: {coordinator_ms:.1f} ms")
    rounds = [n for n in totals if n.startswith("round")]
    handled = sum(totals[n] for n in rounds) * 1000 / sessions
    print(f"handlers per member per session: {handled:.2f} ms; the rest of the host's CPU "
          f"(gRPC, TLS, protobuf, threads): {node_ms - handled:.2f} ms")
    for name in (*rounds, *sorted(n for n in totals if not n.startswith("round"))):
        print(f"  {name:<48} {totals[name] * 1000 / sessions:7.3f} ms")
    if cprofile:
        print(f"profiles: {', '.join(str(o.with_suffix('.prof')) for o in outs)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=25)
    parser.add_argument("--queries", type=int, default=15)
    parser.add_argument("--hosts", type=int, default=2)
    parser.add_argument("--cprofile", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "secure-profile")
    parser.add_argument("--host", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("configs", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.host is not None:
        host(args.host, args.cprofile, args.configs)
    else:
        drive(args.nodes, args.queries, args.hosts, args.cprofile, args.out)


if __name__ == "__main__":
    main()
