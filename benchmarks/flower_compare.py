"""The same federated aggregate with Flower and with bridgestat, side by side, as a ratio.

Why: an issue asks how bridgestat's per-query cost compares with a general federated
framework doing the same job. One synthetic network of N members is written once; both
systems then answer the same two aggregates over the SAME member CSV files on loopback,
plain text (no TLS) on both sides, one system after the other (never competing for CPU):

* bridgestat: N real `bridgestat-node serve` processes; per round one `Network.histogram`
  (participant.gender) and one `Network.mean` (assessment.bridge_total at intake). That is
  the product: schema validation, OpenDP noise and a durable ledger charge on every node.
* Flower: Flower's deployment runtime, real processes: one SuperLink, N SuperNodes (each
  given its member's folder through --node-config) and a ServerApp/ClientApp pair
  (benchmarks/flower_app) that computes the same histogram counts and (sum, count) for the
  mean on every client and sums them on the server. Plain aggregation, no DP. Flower's Ray
  simulation engine is not used (it is not a network).

A round is timed around the aggregate only (inside the ServerApp for Flower), after warm-up
rounds; process start-up is reported separately. What dominates Flower's round (flwr 1.41):
the ServerApp polls the SuperLink for replies every 3 s and an idle SuperNode polls it every
3 s (both hard-coded), and every message starts a fresh `flwr-clientapp` process (Python,
flwr and pandas imported, CSVs read) on each SuperNode; the ClientApp's own compute time is
printed beside it. flwr 1.42.0 (newest) is not used: it requires certifi>=2026.10.19, which
is not on PyPI, so it cannot be installed. Flower lives in its own venv
(/work/main/.bench-flwr, made here from benchmarks/requirements-flower.txt if missing), with
its state in a temporary FLWR_HOME; every process started here is stopped on exit.

Usage: .venv/bin/python benchmarks/flower_compare.py [--members 10] [--participants 2000]
       [--rounds 30] [--warmup 3]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from bridgestat.coordinator.api import NETWORK, Network
from bridgestat.coordinator.demo import local, synth

REPO = Path(__file__).resolve().parents[1]
FLOWER_VENV = REPO / ".bench-flwr"
REQUIREMENTS = REPO / "benchmarks" / "requirements-flower.txt"
FLOWER_APP = REPO / "benchmarks" / "flower_app"
HIST = ("participant", "gender")
MEAN = ("assessment", "bridge_total")
EPSILON = 0.5  # per query, as in benchmarks/fanout_latency.py
PR_SET_CHILD_SUBREAPER = 36  # linux/prctl.h
AGREE_Z = 4.0  # |bridgestat - Flower| within this many DP-noise SEs counts as agreeing


@dataclass
class Run:
    """One system's figures: per-round wall times (ms), start-up (s) and its answer."""

    name: str
    round_ms: list[float]
    startup_s: float
    shares: dict[str, float]  # histogram category -> share of the pooled total
    mean: float
    extra: dict[str, Any] = field(default_factory=dict)


# -- helpers ---------------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, process: subprocess.Popen[bytes], log: Path,
              timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited:\n{log.read_text()[-3000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listening on port {port} after {timeout:.0f} s")


# -- process trees (Flower's SuperExec and app processes are children of what we start) ---


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: start time in clock ticks


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def descendants(roots: Sequence[int]) -> dict[int, str]:
    """Every live process under `roots` (roots included), with its start time."""
    tree, found, todo = _children(), {}, list(roots)
    while todo:
        pid = todo.pop()
        start = _start_time(pid)
        if start is not None and pid not in found:
            found[pid] = start
            todo.extend(tree.get(pid, []))
    return found


def alive(processes: dict[int, str]) -> dict[int, str]:
    """Those of `processes` still running (same pid and start time; zombies excluded)."""
    live = {}
    for pid, start in processes.items():
        if _start_time(pid) == start and "(Z)" not in _state(pid):
            live[pid] = start
    return live


def _state(pid: int) -> str:
    try:
        return "(" + Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] + ")"
    except OSError:
        return "(gone)"


def stop_trees(processes: Sequence[subprocess.Popen[bytes]], grace: float = 15.0, *,
               extra: Iterable[int] = ()) -> None:
    """SIGTERM every process under `processes` and the pids in `extra` (also children
    appearing meanwhile), then SIGKILL whatever outlives `grace`."""
    tracked: dict[int, str] = {}
    roots = [p.pid for p in processes] + list(extra)
    deadline = time.monotonic() + grace
    while True:
        for process in processes:
            process.poll()  # reap our direct children
        fresh = {pid: start for pid, start in descendants(roots + list(alive(tracked))).items()
                 if pid not in tracked}
        for pid in fresh:
            _signal(pid, signal.SIGTERM)
        tracked.update(fresh)
        if not alive(tracked) or time.monotonic() > deadline:
            break
        _reap()
        time.sleep(0.2)
    for pid in alive(tracked):
        _signal(pid, signal.SIGKILL)
    for process in processes:
        process.wait()


def _signal(pid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.kill(pid, sig)


# -- the Flower environment -----------------------------------------------------------------


def ensure_flower_venv() -> str:
    """Create .bench-flwr from requirements-flower.txt unless it has the pinned flwr; return
    the installed flwr version."""
    python = FLOWER_VENV / "bin" / "python"
    pinned = next(line.split("==")[1].strip() for line in REQUIREMENTS.read_text().splitlines()
                  if line.startswith("flwr=="))
    if _flwr_version(python) != pinned:
        base = getattr(sys, "_base_executable", sys.executable)
        if not python.exists():
            subprocess.run([base, "-m", "venv", str(FLOWER_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)],
                       check=True)
    version = _flwr_version(python)
    if version != pinned:
        raise RuntimeError(f"{FLOWER_VENV}: flwr {version}, expected {pinned}")
    return version


def _flwr_version(python: Path) -> str | None:
    if not python.exists():
        return None
    probe = subprocess.run([str(python), "-c", ("import importlib.metadata as m;"
                            "print(m.version('flwr'))")], capture_output=True, text=True)
    return probe.stdout.strip() if probe.returncode == 0 else None


# -- bridgestat -------------------------------------------------------------------------------


def bench_bridgestat(root: Path, rounds: int, warmup: int) -> Run:
    members = local.write_configs(root, total_epsilon=1e6, max_per_query=1.0, tls=False)
    started = time.perf_counter()
    processes = local.start_nodes(members, root)
    startup = time.perf_counter() - started
    try:
        with Network.from_file(root / "network.yaml", insecure=True) as net:
            times, hist, mean = [], pd.DataFrame(), pd.DataFrame()
            for round_id in range(warmup + rounds):
                start = time.perf_counter()
                hist = net.histogram(*HIST, epsilon=EPSILON)
                mean = net.mean(*MEAN, epsilon=EPSILON)
                if round_id >= warmup:
                    times.append((time.perf_counter() - start) * 1000)
    finally:
        local.stop_nodes(processes)
    for frame in (hist, mean):
        if not (frame.status == "ok").all():
            raise RuntimeError(f"bridgestat query failed: {frame.status.unique().tolist()}")
    pooled_hist = hist[hist.member == NETWORK].set_index("category")
    pooled_mean = mean[mean.member == NETWORK].iloc[0]
    return Run("bridgestat", times, startup,
               shares=pooled_hist.estimate.astype(float).to_dict(),
               mean=float(pooled_mean.estimate),
               extra={"share_se_dp": pooled_hist.se_dp.astype(float).to_dict(),
                      "mean_se_dp": float(pooled_mean.se_dp), "mean_se": float(pooled_mean.se),
                      "mean_n": float(pooled_mean.n)})


# -- Flower -----------------------------------------------------------------------------------


def flower_env(home: Path) -> dict[str, str]:
    """Flower's own venv first on PATH (the SuperLink and SuperNodes spawn flower-superexec,
    flwr-serverapp and flwr-clientapp by name); its state and app cache in `home`."""
    bin_dir = str(FLOWER_VENV / "bin")
    env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
    return {**env, "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
            "FLWR_HOME": str(home), "PYTHONUNBUFFERED": "1", "VIRTUAL_ENV": str(FLOWER_VENV)}


def write_flower_config(home: Path, port: int) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "bench"\n\n'
        f'[superlink.bench]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')


@contextmanager
def flower_processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """The Flower processes started inside; all of them (and their children) stopped after.

    Flower's SuperExec starts app processes that outlive it, so this process becomes a
    child subreaper first (Linux): orphans are re-parented here, found and reaped."""
    _become_subreaper()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        yield processes
    finally:
        stop_trees(processes)
        orphans = set(descendants([os.getpid()])) - {os.getpid()}
        stop_trees([], extra=orphans)
        _reap()


def _become_subreaper() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _reap() -> None:
    """Collect exited re-parented children (zombies) without blocking."""
    with suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)


def start_flower(root: Path, names: Sequence[str], env: dict[str, str], port: int,
                 processes: list[subprocess.Popen[bytes]]) -> None:
    """One SuperLink (runtime dependency installation off: the venv has what the app needs),
    then one SuperNode per member reading <root>/<member>/."""
    bin_dir = FLOWER_VENV / "bin"
    log = root / "flower-superlink.log"
    processes.append(spawn([str(bin_dir / "flower-superlink"), "--insecure", "--port", str(port),
                            "--disable-runtime-dependency-installation"], env, log))
    wait_port(port, processes[0], log)
    for name in names:
        node_config = f"data-dir={json.dumps(str(root / name))}"
        processes.append(spawn(
            [str(bin_dir / "flower-supernode"), "--insecure", "--superlink",
             f"127.0.0.1:{port}", "--port", str(free_port()), "--node-config", node_config],
            env, root / f"flower-{name}.log"))


def submit_flower_run(root: Path, env: dict[str, str], members: int, rounds: int,
                      warmup: int, timings: Path) -> None:
    run_config = (f"members={members} rounds={rounds} warmup={warmup} "
                  f"timings={json.dumps(str(timings))}")
    submitted = subprocess.run(
        [str(FLOWER_VENV / "bin" / "flwr"), "run", str(FLOWER_APP), "bench",
         "--run-config", run_config], env=env, cwd=root, capture_output=True, text=True,
        timeout=120)
    if submitted.returncode != 0 or "Successfully started run" not in submitted.stdout:
        raise RuntimeError(f"flwr run failed:\n{submitted.stdout}\n{submitted.stderr}")


def wait_timings(timings: Path, processes: Sequence[subprocess.Popen[bytes]],
                 stall: float = 180.0) -> dict[str, Any]:
    """The ServerApp's final result; fails when a Flower process dies, the app reports an
    error, or no round completes for `stall` seconds (the file is rewritten every round)."""
    last_change, seen = time.monotonic(), -1.0
    while time.monotonic() - last_change < stall:
        if timings.exists():
            if timings.stat().st_mtime != seen:
                seen, last_change = timings.stat().st_mtime, time.monotonic()
            result: dict[str, Any] = json.loads(timings.read_text())
            if "error" in result:
                raise RuntimeError(f"Flower ServerApp failed:\n{result['error']}")
            if result["complete"]:
                return result
        dead = [p.args for p in processes if p.poll() is not None]
        if dead:
            raise RuntimeError(f"Flower process exited early: {dead[0]}")
        time.sleep(0.5)
    done = json.loads(timings.read_text())["done"] if timings.exists() else 0
    raise TimeoutError(f"Flower run stalled: no round finished for {stall:.0f} s "
                       f"({done} done)")


def bench_flower(root: Path, names: Sequence[str], rounds: int, warmup: int) -> Run:
    home, port, timings = root / "flwr-home", free_port(), root / "flower-timings.json"
    write_flower_config(home, port)
    env = flower_env(home)
    spawned = time.time()
    with flower_processes() as processes:
        start_flower(root, names, env, port, processes)
        submit_flower_run(root, env, len(names), rounds, warmup, timings)
        result = wait_timings(timings, processes)
        flower_pids = descendants([p.pid for p in processes])
    answer = result["answer"]
    total = sum(answer["histogram"].values())
    return Run("Flower", result["round_ms"], result["first_round_wall"] - spawned,
               shares={k: v / total for k, v in answer["histogram"].items()},
               mean=float(answer["mean"]),
               extra={"counts": answer["histogram"], "mean_n": answer["n"],
                      "compute_ms": result["compute_ms"], "pids": flower_pids})


# -- report -----------------------------------------------------------------------------------


def report(bridge: Run, flower: Run, args: argparse.Namespace) -> bool:
    """Print the figures and the answer check; True when the answers agree."""
    print(f"{args.members} members x {args.participants:,} participants, {args.rounds} rounds "
          f"after {args.warmup} warm-up; loopback, plain text; aggregate per round = "
          f"histogram of {'.'.join(HIST)} + mean of {'.'.join(MEAN)} (intake)")
    for run in (bridge, flower):
        print(f"  {run.name:<10} p50 {statistics.median(run.round_ms):9.1f} ms   "
              f"p95 {percentile(run.round_ms, 0.95):9.1f} ms   start-up {run.startup_s:5.1f} s")
    ratio = statistics.median(bridge.round_ms) / statistics.median(flower.round_ms)
    print(f"  ratio bridgestat / Flower (p50): {ratio:.4f}")
    compute = statistics.median(flower.extra["compute_ms"])
    print(f"  Flower ClientApp compute (slowest member, p50): {compute:.1f} ms of each round")
    print("  bridgestat includes: schema validation, OpenDP noise (epsilon "
          f"{EPSILON} per query), a durable ledger charge per node, pooling into DataFrames.")
    print("  Flower includes: plain aggregation (no DP, no accounting); SuperLink queueing, "
          "SuperNode polling, one ClientApp process per message.")
    return check_answers(bridge, flower)


def check_answers(bridge: Run, flower: Run) -> bool:
    """Flower's exact answers against bridgestat's noisy ones, in DP-noise SEs."""
    mean_z = (bridge.mean - flower.mean) / bridge.extra["mean_se_dp"]
    print(f"answers (last round): mean {MEAN[1]}: Flower exact {flower.mean:.3f} "
          f"(n {flower.extra['mean_n']}), bridgestat {bridge.mean:.3f} "
          f"(noisy n {bridge.extra['mean_n']:.0f}, se_dp {bridge.extra['mean_se_dp']:.3f}), "
          f"z {mean_z:+.2f}")
    print(f"  {HIST[1]:<10} {'Flower n':>9} {'Flower':>8} {'bridgestat':>11} {'se_dp':>8} "
          f"{'z':>6}")
    zs = [mean_z]
    for category in sorted(set(bridge.shares) | set(flower.shares)):
        ours, theirs = bridge.shares.get(category, float("nan")), flower.shares.get(category, 0.0)
        se = bridge.extra["share_se_dp"].get(category, float("nan"))
        zs.append((ours - theirs) / se)
        print(f"  {category:<10} {flower.extra['counts'].get(category, 0):>9} {theirs:>8.4f} "
              f"{ours:>11.4f} {se:>8.4f} {zs[-1]:>+6.2f}")
    agree = all(abs(z) <= AGREE_Z for z in zs)
    print(f"  agree (every |z| <= {AGREE_Z:g} DP-noise SEs): {'yes' if agree else 'NO'}")
    return agree


def keep_logs(root: Path) -> Path:
    """Copy the run's logs (nodes, SuperLink, SuperNodes) out of the temporary directory."""
    kept = Path(tempfile.mkdtemp(prefix="flower_compare-logs-"))
    for log in root.glob("*.log"):
        shutil.copy(log, kept / log.name)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--participants", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the clean-up still runs
    version = ensure_flower_venv()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synth.write_network(root, members=args.members, seed=5,
                            sizes=[args.participants] * args.members)
        names = synth.member_names(args.members)
        try:
            bridge = bench_bridgestat(root, args.rounds, args.warmup)
            flower = bench_flower(root, names, args.rounds, args.warmup)
        except BaseException:
            print(f"failed; logs kept in {keep_logs(root)}", file=sys.stderr)
            raise
    print(f"Flower {version} (deployment runtime: SuperLink + {args.members} SuperNodes), "
          f"bridgestat from {REPO}")
    agree = report(bridge, flower, args)
    left = set(alive(flower.extra["pids"])) | (set(descendants([os.getpid()])) - {os.getpid()})
    print(f"Flower processes left running: {len(left)}")
    if left or not agree:
        sys.exit(1)


if __name__ == "__main__":
    main()
