"""Empirical privacy audit of secure mode: the network sum with distributed noise, and a share
that stood alone.

Usage: python benchmarks/secure_audit.py [--releases 20000] [--control-releases 5000]
                                         [--sessions 300] [--alpha 1e-5] [--workers 2]

Prints the rho the members charge (`distributed_dp.account`) beside the audit's lower bound,
for the network sum an attacker sees and for one member's share alone, and the bounds of two
negative controls. A benchmark: it asserts nothing; tests/statistical/test_secure_audit.py
runs the same core and asserts.

The network (the defaults): K = 5 members, t = `default_threshold(5)` = 4, c =
`default_colluding(5)` = 1, so H = t - c = 3 honest shares. Each member's input is the centred
fixed-point sum of its participants' paired changes, from the node's own `fixed_point` (clip
[-40, 40], unit F = 2^20 = SUM_SCALE). D and D' differ at one member (the victim, m000): D'
adds one participant with a change of +40, the clip bound, which moves the victim's input by
exactly F; so Delta = F, the sensitivity the accounting is given. Each member draws its share
for rho = 1 on the network sum (`sigma_for_rho(F, 1, H)`; tau is 0 at this scale).

The attacker's view (the worst case the charge covers): of the K members, K - t = 1 (m004)
drops out before its masked input, so the unmasked output is the sum over U3 = t = 4
survivors of their inputs plus noise shares; the colluder (m003) subtracts its own input
vector from it. What is left is the sum of the H honest members' `secure_input` vectors,
mod 2^64, decoded: the release audited here. "Share alone": the victim's `secure_input`
vector on its own (the aggregation failed and its noisy vector stood alone), against the
`rho_alone` its audit log records.

Which code runs. A share of the releases (`--sessions` per dataset) runs the full in-process
protocol: K `SecAggMember`s with certificates from a real network CA and the real
`SecAggServer`, m004 dropping in the advertise, share-keys or masked-input round in turn;
the release is the server's output minus the colluder's input. Further sessions without
dropouts, and with m004 dropping after its masked input (consistency, unmask), are only
checked. Every session's output must equal the sum of its U3 members' `secure_input`
vectors exactly. The bulk of the releases sums the honest members' `secure_input` draws
directly: the output is a deterministic function of the survivors' input vectors (the
pairwise masks cancel exactly mod 2^64 and the self-masks are removed exactly:
tests/unit/test_secagg.py proves it, and every session here checks it), and the masks are
independent of the noise, so the release's distribution is that of the sum of independent
`secure_input` draws. For speed one `secure_input` call draws a batch: it is called with the
member's length-1 input repeated n times, and coordinate i is one release of the member's
length-1 vector (OpenDP's vector discrete Gaussian draws each coordinate independently,
same scale, same sampler). numpy only adds and keeps the vectors; all noise is OpenDP's.

The bound (as in `gaussian_audit`): for a Gaussian release with mean shift delta and noise
variance v, rho = delta^2 / (2 v). delta_lo = one-sided (1 - alpha) lower bound of the
mean shift (normal approximation: each release is a sum of discrete Gaussians of scale
~4e5 units, Gaussian to any precision that matters), v_hi = one-sided (1 - alpha) upper
bound of the pooled variance (chi-square); rho_lb = max(delta_lo, 0)^2 / (2 v_hi) exceeds
the true rho with probability <= 2 alpha.

Negative controls (they exist only here, never in node/): "k-not-h", a planner that divides
the noise among all K members (`sigma_for_rho(F, 1, K)`) while only H shares are honest:
the attacker's sum carries 3 of 5 planned shares, true rho 5/3; "four-h", members who draw
their shares for H' = 4H (each share half the scale the accounting was told), true rho 4 on
the network sum and 12 on a share alone, against recorded 1 and 3.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: import benchmarks.* from the checkout
    sys.path.insert(0, str(ROOT))

from benchmarks import privacy_audit, secagg_cpu, validity
from benchmarks.gaussian_audit import Audit, audit
from bridgestat.common import secagg as sa
from bridgestat.common.distributed_dp import (
    NoiseAccount,
    account,
    share_alone_rho,
    sigma_for_rho,
)
from bridgestat.coordinator.secure.secagg_server import SecAggServer, SessionOutcome
from bridgestat.node.mechanisms import FIXED_POINT, fixed_point
from bridgestat.node.secagg_member import SecAggMember, secure_input

Floats = npt.NDArray[np.float64]
Vector = np.ndarray[Any, np.dtype[np.uint64]]

K = 5
T = sa.default_threshold(K)  # 4
C = sa.default_colluding(K)  # 1
H = T - C  # 3
MEMBERS = tuple(f"m{i:03d}" for i in range(K))  # the names `secagg_cpu.identities` issues
VICTIM, HONEST, COLLUDERS, DROPPED = MEMBERS[0], MEMBERS[:H], MEMBERS[H:T], MEMBERS[T:]
CLIP = validity.CHANGE_CLIP  # the paired change's clip bounds, (-40, 40)
DELTA = FIXED_POINT  # the added participant's centred fixed-point value at the clip bound
RHO = 1.0  # on the network sum; the victim's shift is sqrt(2) sd of the attacker's sum
ALPHA = 1e-5  # one-sided, per bound
DATA_SEED = 13
PARTICIPANTS = 150
KINDS = ("correct", "k-not-h", "four-h")
EARLY = (sa.ADVERTISE, sa.SHARE_KEYS, sa.MASKED_INPUT)  # m004 drops before its input
LATE = (None, sa.CONSISTENCY, sa.UNMASK)  # no dropout, or m004's input stays in the sum


# --------------------------------------------------------------------------- data, scales


@lru_cache(maxsize=2)
def member_inputs(neighbour: bool) -> dict[str, int]:
    """Each member's fixed-point input: the centred sum of its participants' clipped paired
    changes (`mechanisms.fixed_point`). D' adds a +40 change at the victim."""
    rng = np.random.default_rng(DATA_SEED)  # synthetic data, not noise
    out = {}
    for name in MEMBERS:
        changes = rng.normal(5.0, 12.0, PARTICIPANTS)
        if neighbour and name == VICTIM:
            changes = np.append(changes, CLIP[1])
        z, _ = fixed_point(changes, *CLIP)
        out[name] = int(z.sum())
    return out


def share_scale(kind: str) -> float:
    """The share scale the members draw with: correct (H honest shares), k-not-h (the noise
    divided among all K), four-h (shares for H' = 4H)."""
    honest = {"correct": H, "k-not-h": K, "four-h": 4 * H}[kind]
    return sigma_for_rho(float(DELTA), RHO, honest)


def charged() -> NoiseAccount:
    """What each member charges (`rho_network`) and records (`rho_alone`) for the release."""
    return account(T, C, float(DELTA), share_scale("correct"))


def claimed(kind: str) -> tuple[float, float]:
    """(network rho, share-alone rho) each kind's members would charge and record. k-not-h:
    the planner believes its K shares give RHO, and records its actual scale's alone loss
    (honestly: so its share-alone view is no control); four-h: the accounting is told the
    correct scale while the shares are drawn at half of it."""
    acc = charged()
    if kind == "k-not-h":
        return RHO, share_alone_rho(float(DELTA), share_scale(kind))
    return acc.rho_network, acc.rho_alone


# --------------------------------------------------------------------------- bulk releases


def honest_inputs(neighbour: bool, kind: str, n: int) -> dict[str, Vector]:
    """n draws of each honest member's length-1 `secure_input` vector, as one batch call per
    member (coordinate i = release i; module docstring)."""
    inputs, sigma = member_inputs(neighbour), share_scale(kind)
    return {m: secure_input([inputs[m]] * n, sigma) for m in HONEST}


def views(vectors: dict[str, Vector]) -> Floats:
    """(n, 2) releases: column 0 the attacker's network sum (the honest members' vectors
    summed mod 2^64, decoded), column 1 the victim's vector alone (decoded)."""
    total = np.zeros_like(vectors[VICTIM])
    for m in HONEST:
        total += vectors[m]  # uint64 wraps: arithmetic mod 2^64, as the server's
    return np.column_stack([np.array(sa.decode(total), dtype=np.float64),
                            np.array(sa.decode(vectors[VICTIM]), dtype=np.float64)])


def release_values(neighbour: bool, kind: str, n: int) -> Floats:
    return views(honest_inputs(neighbour, kind, n))


def _task(args: tuple[bool, str, int]) -> Floats:
    return release_values(*args)


# --------------------------------------------------------------------------- the protocol


@dataclass(frozen=True)
class Network:
    ca: x509.Certificate
    identities: dict[str, tuple[ec.EllipticCurvePrivateKey, bytes]]  # key, DER certificate


def network(directory: Path) -> Network:
    """A real network CA and a certificate per member."""
    ca_cert, ids = secagg_cpu.identities(directory, K)
    return Network(ca_cert, ids)


def session(net: Network, name: str, inputs: dict[str, Vector], drop: str | None
            ) -> SessionOutcome:
    """One session in-process, the server relaying every message; m004 sends nothing from
    round `drop` on (None: nobody drops)."""
    params = sa.SecAggParams(name, MEMBERS, T, C, 1)
    members = {m: SecAggMember(params, m, *net.identities[m], net.ca, inputs[m])
               for m in MEMBERS}
    server = SecAggServer(params, net.ca)
    gone: set[str] = set()

    def alive(step: str, pool: Sequence[str]) -> list[str]:
        if step == drop:
            gone.update(DROPPED)
        return [m for m in pool if m not in gone]

    ads = server.collect_advertisements(
        [members[m].advertise() for m in alive(sa.ADVERTISE, MEMBERS)])
    sent = {m: members[m].share_keys(ads) for m in alive(sa.SHARE_KEYS, [a.member for a in ads])}
    forwarded = server.collect_shares(sent)
    u3 = server.collect_masked([members[m].masked_input(forwarded[m])
                                for m in alive(sa.MASKED_INPUT, list(forwarded))])
    request = server.collect_consistency(
        [members[m].consistency(u3) for m in alive(sa.CONSISTENCY, u3)])
    return server.collect_unmask(
        [members[m].unmask(request) for m in alive(sa.UNMASK, [s.member for s in
                                                               request.signatures])])


@dataclass(frozen=True)
class ProtocolRun:
    releases: Floats  # (n, 2) as `views`, from the early-dropout sessions
    sessions: int
    exact: int  # sessions whose output equals the sum of U3's secure_input vectors
    without_dropout: int
    worst_case: int  # U3 = t members: these sessions' releases are in the audit sample


def protocol_releases(net: Network, neighbour: bool, sessions: int) -> ProtocolRun:
    """`sessions` worst-case sessions (m004 drops before its input, rounds in turn) whose
    releases join the audit sample, and `sessions // 3` more (no dropout, or m004 dropping
    after its input) that are only checked."""
    inputs, sigma = member_inputs(neighbour), share_scale("correct")
    plan: list[tuple[str | None, bool]] = [(EARLY[i % 3], True) for i in range(sessions)]
    plan += [(LATE[i % 3], False) for i in range(sessions // 3)]
    rows, exact, clean = [], 0, 0
    for i, (drop, audited) in enumerate(plan):
        vectors = {m: secure_input([inputs[m]], sigma) for m in MEMBERS}
        outcome = session(net, f"audit-{int(neighbour)}-{i:06d}", vectors, drop)
        total = np.zeros(1, dtype=np.uint64)
        for m in outcome.survivors:
            total += vectors[m]
        exact += outcome.total == sa.decode(total)
        clean += drop is None
        if audited:
            assert outcome.survivors == MEMBERS[:T], outcome.survivors
            seen = sa.encode(outcome.total)
            for m in COLLUDERS:  # the colluder removes its own input from the output
                seen -= vectors[m]
            rows.append((float(sa.decode(seen)[0]), float(sa.decode(vectors[VICTIM])[0])))
    return ProtocolRun(np.array(rows, dtype=np.float64).reshape(-1, 2), len(plan), exact,
                       clean, sessions)


# --------------------------------------------------------------------------- the audit


@dataclass(frozen=True)
class Result:
    account: NoiseAccount
    network: dict[str, Audit]  # per kind: the attacker's network sum
    alone: dict[str, Audit]  # per kind: the victim's share alone
    protocol: tuple[ProtocolRun, ProtocolRun]  # D, D'
    releases: int  # per dataset, protocol sessions included


def sample(releases: int, control_releases: int, workers: int
           ) -> dict[tuple[bool, str], Floats]:
    counts = {(neighbour, kind): control_releases if kind != "correct" else releases
              for neighbour in (False, True) for kind in KINDS}
    return privacy_audit.sample_in_pool(_task, counts, workers)


def run(releases: int, control_releases: int, sessions: int, workers: int,
        alpha: float = ALPHA) -> Result:
    """`releases` per dataset for the correct shares, of which `sessions` through the
    protocol; `control_releases` per dataset and control."""
    with tempfile.TemporaryDirectory(prefix="secure-audit-") as tmp:
        net = network(Path(tmp))
        protocol = (protocol_releases(net, False, sessions),
                    protocol_releases(net, True, sessions))
    bulk = sample(releases - sessions, control_releases, workers)
    for neighbour, run_ in zip((False, True), protocol, strict=True):
        bulk[neighbour, "correct"] = np.concatenate([run_.releases, bulk[neighbour, "correct"]])
    network_audits = {kind: audit(bulk[False, kind][:, :1], bulk[True, kind][:, :1], alpha)
                      for kind in KINDS}
    alone_audits = {kind: audit(bulk[False, kind][:, 1:], bulk[True, kind][:, 1:], alpha)
                    for kind in KINDS}
    return Result(charged(), network_audits, alone_audits, protocol, releases)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--releases", type=int, default=20_000)
    parser.add_argument("--control-releases", type=int, default=5_000)
    parser.add_argument("--sessions", type=int, default=300)
    parser.add_argument("--alpha", type=float, default=ALPHA)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    result = run(args.releases, args.control_releases, args.sessions, args.workers,
                 args.alpha)
    acc = result.account
    print(f"secure network sum: K {K}, t {acc.threshold}, c {acc.colluding}, H {acc.honest}, "
          f"Delta {acc.delta_l2:.0f} (F), share scale {acc.sigma_share:.1f}; releases per "
          f"dataset {result.releases} (control {args.control_releases}), one-sided "
          f"confidence {1 - args.alpha} per bound")
    for run_, label in zip(result.protocol, ("D", "D'"), strict=True):
        print(f"protocol sessions on {label}: {run_.sessions} ({run_.worst_case} worst case in "
              f"the sample, {run_.without_dropout} without dropouts), output exact in "
              f"{run_.exact}")
    for column, view, audits in ((0, "network sum (H honest shares)", result.network),
                                 (1, "share alone (victim)", result.alone)):
        print(f"{view}: charged rho {(acc.rho_network, acc.rho_alone)[column]:.6g}")
        for kind in KINDS:
            claim = claimed(kind)[column]
            verdict = "" if kind == "correct" else (
                "  CAUGHT" if audits[kind].rho_lb > claim else "  within its claim")
            print(f"  {kind:9s} claims {claim:.4g}: {describe(audits[kind])}{verdict}")


def describe(a: Audit) -> str:
    """An audit in units of Delta (the shift) and fixed-point units (the sd)."""
    return (f"rho_lb {a.rho_lb:.3f}  shift {a.shift / DELTA:.4f} Delta (lower bound "
            f"{a.shift_lo / DELTA:.4f}), sd {a.variance ** 0.5:.0f} (upper bound "
            f"{a.variance_hi ** 0.5:.0f}), n {a.n}")


if __name__ == "__main__":
    main()
