"""CPU per secure-aggregation session (target: member <= 15 ms at K = 25).

Runs one session in-process per size with K real members (certificates from a real network
CA) and the real coordinator side, a 66-value input (the largest regression's cross
products) with its OpenDP noise share, and 5 % of the members dropping out after sending
their shares (so the coordinator recovers their mask keys). Prints each member's CPU time
(median and max over members, all rounds, noise included) and the coordinator's, and the
ratio of the K = 25 median to the 15 ms target. A member checks a peer's certificate once
per process (common/secagg.py remembers it); the first session, which checks them all, is
printed apart.
Usage: python benchmarks/secagg_cpu.py [--sizes 25 100] [--dim 66] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bridgestat.common import secagg as sa
from bridgestat.common.distributed_dp import sigma_for_rho
from bridgestat.coordinator import ca
from bridgestat.coordinator.secure.secagg_server import SecAggServer
from bridgestat.node.secagg_member import SecAggMember, secure_input

TARGET_MS = 15.0
T = TypeVar("T")


def identities(directory: Path, k: int) -> tuple[x509.Certificate, dict[str, tuple[
        ec.EllipticCurvePrivateKey, bytes]]]:
    ca.init_ca(directory)
    out = {}
    for i in range(k):
        ident = ca.issue(directory, f"m{i:03d}")
        key = serialization.load_pem_private_key(ident.key.read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        cert = x509.load_pem_x509_certificate(ident.cert.read_bytes())
        out[ident.name] = (key, cert.public_bytes(serialization.Encoding.DER))
    return x509.load_pem_x509_certificate((directory / ca.CA_CERT).read_bytes()), out


def session(ca_cert: x509.Certificate, ids: dict[str, tuple[ec.EllipticCurvePrivateKey,
            bytes]], k: int, dim: int, run: int, cold: bool = False
            ) -> tuple[list[float], float]:
    """One session; (each surviving member's CPU seconds, the coordinator's CPU seconds).
    `cold`: every member checks every peer's certificate (as in its first session)."""
    names = tuple(sorted(ids))[:k]
    t = sa.default_threshold(k)
    params = sa.SecAggParams(f"bench-{k}-{run:04d}", names, t, sa.default_colluding(k), dim)
    sigma = sigma_for_rho(float(sa.SUM_SCALE), 0.05, params.honest)
    cpu = dict.fromkeys(names, 0.0)
    server_cpu = [0.0]

    def timed(who: str, call: Callable[[], T]) -> T:
        start = time.process_time()
        result = call()
        elapsed = time.process_time() - start
        if who == "server":
            server_cpu[0] += elapsed
        else:
            cpu[who] += elapsed
        return result

    members = {m: timed(m, lambda m=m: SecAggMember(
        params, m, ids[m][0], ids[m][1], ca_cert,
        secure_input([1 << 30] * dim, sigma))) for m in names}
    server = SecAggServer(params, ca_cert)
    ads = [timed(m, members[m].advertise) for m in names]
    u1 = timed("server", lambda: server.collect_advertisements(ads))
    sent = {}
    for m in names:
        if cold:
            sa.forget_certificates()
        sent[m] = timed(m, lambda m=m: members[m].share_keys(u1))
    fwd = timed("server", lambda: server.collect_shares(sent))
    dropped = set(names[:max(1, round(0.05 * k))])
    masked = [timed(m, lambda m=m: members[m].masked_input(fwd[m]))
              for m in names if m not in dropped]
    u3 = timed("server", lambda: server.collect_masked(masked))
    sigs = [timed(m, lambda m=m: members[m].consistency(u3)) for m in u3]
    request = timed("server", lambda: server.collect_consistency(sigs))
    answers = [timed(m, lambda m=m: members[m].unmask(server.unmask_request_for(m, request)))
               for m in u3]
    outcome = timed("server", lambda: server.collect_unmask(answers))
    assert len(outcome.total) == dim
    return [cpu[m] for m in u3], server_cpu[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[25, 100])
    parser.add_argument("--dim", type=int, default=66)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ca_cert, ids = identities(Path(tmp), max(args.sizes))
        sa.share_secrets([b"\x00" * 32], 2, 3)  # import mpyc once, outside the timings
        print(f"{'K':>5} {'t':>4} {'member median ms':>17} {'member max ms':>14} "
              f"{'coordinator ms':>15} {'member median, first session':>29}")
        for k in args.sizes:
            members: list[float] = []
            server: list[float] = []
            cold, _ = session(ca_cert, ids, k, args.dim, 0, cold=True)
            for run in range(1, args.repeats + 1):
                cpu, coordinator = session(ca_cert, ids, k, args.dim, run)
                members += cpu
                server.append(coordinator)
            median = 1000 * statistics.median(members)
            print(f"{k:>5} {sa.default_threshold(k):>4} {median:>17.2f} "
                  f"{1000 * max(members):>14.2f} {1000 * statistics.median(server):>15.1f} "
                  f"{1000 * statistics.median(cold):>29.2f}")
            if k == 25:
                print(f"      K = 25 member median / {TARGET_MS:.0f} ms target: "
                      f"{median / TARGET_MS:.2f}")


if __name__ == "__main__":
    main()
