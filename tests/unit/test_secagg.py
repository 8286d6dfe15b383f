"""Secure aggregation driven in-process: K real members (node side) and the real server
(coordinator side), certificates from the real network CA, no mocks.

The driver below relays messages as the coordinator's transport will, with hooks to drop
members in a round or to tamper with what the coordinator relays.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bridgestat.common import secagg as sa
from bridgestat.common.secagg import SecAggError, SecAggParams
from bridgestat.coordinator import ca
from bridgestat.coordinator.secure.secagg_server import SecAggServer, SessionOutcome
from bridgestat.node.secagg_member import SecAggMember, noise_share, secure_input

SESSION = "session-0001"
DIM = 4


@dataclasses.dataclass
class Network:
    ca_cert: x509.Certificate
    identities: dict[str, tuple[ec.EllipticCurvePrivateKey, bytes]]


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Network:
    directory = tmp_path_factory.mktemp("ca")
    ca.init_ca(directory)
    ids = {}
    for i in range(25):
        ident = ca.issue(directory, f"m{i:02d}")
        ids[ident.name] = _load(ident.key, ident.cert)
    ids["outsider"] = _outsider(tmp_path_factory.mktemp("other-ca"))
    cert = x509.load_pem_x509_certificate((directory / ca.CA_CERT).read_bytes())
    return Network(cert, ids)


def _load(key_path: Path, cert_path: Path) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    der = x509.load_pem_x509_certificate(cert_path.read_bytes()).public_bytes(
        serialization.Encoding.DER)
    return key, der


def _outsider(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """m00's name on a certificate from another CA."""
    ca.init_ca(directory)
    ident = ca.issue(directory, "m00")
    return _load(ident.key, ident.cert)


def params(k: int, t: int | None = None, c: int = 1) -> SecAggParams:
    members = tuple(f"m{i:02d}" for i in range(k))
    return SecAggParams(SESSION, members, t or sa.default_threshold(k), c, DIM)


def make_members(net: Network, p: SecAggParams, inputs: dict[str, np.ndarray]
                 ) -> dict[str, SecAggMember]:
    return {m: SecAggMember(p, m, net.identities[m][0], net.identities[m][1], net.ca_cert,
                            inputs[m]) for m in p.members}


def random_inputs(p: SecAggParams, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)  # test data, not privacy noise
    return {m: sa.encode([int(x) for x in rng.integers(-2**40, 2**40, p.dim)])
            for m in p.members}


Hook = Callable[[str, object], object]


def run(net: Network, p: SecAggParams, inputs: dict[str, np.ndarray],
        drop: dict[str, set[str]] | None = None,
        members: dict[str, SecAggMember] | None = None,
        relay: Hook | None = None) -> tuple[SessionOutcome, SecAggServer]:
    """One session; `drop[round]` members send nothing from that round on; `relay(member,
    message)` may replace what the coordinator relays to a member."""
    drop = drop or {}
    relay = relay or (lambda member, message: message)
    members = members or make_members(net, p, inputs)
    server = SecAggServer(p, net.ca_cert)
    gone: set[str] = set()

    def alive(step: str, pool: Sequence[str]) -> list[str]:
        gone.update(drop.get(step, set()))
        return [m for m in pool if m not in gone]

    adverts = server.collect_advertisements(
        [members[m].advertise() for m in alive(sa.ADVERTISE, p.members)])
    u1 = [a.member for a in adverts]
    sent = {m: members[m].share_keys(relay(m, adverts)) for m in alive(sa.SHARE_KEYS, u1)}
    forwarded = server.collect_shares(sent)
    masked = [members[m].masked_input(relay(m, forwarded[m]))
              for m in alive(sa.MASKED_INPUT, list(forwarded))]
    u3 = server.collect_masked(masked)
    signatures = [members[m].consistency(relay(m, u3)) for m in alive(sa.CONSISTENCY, u3)]
    request = server.collect_consistency(signatures)
    signers = [s.member for s in request.signatures]
    responses = [members[m].unmask(relay(m, server.unmask_request_for(m, request)))
                 for m in alive(sa.UNMASK, signers)]
    return server.collect_unmask(responses), server


def expected(inputs: dict[str, np.ndarray], survivors: Sequence[str]) -> tuple[int, ...]:
    total = np.zeros(DIM, dtype=np.uint64)
    for m in survivors:
        total += inputs[m]
    return sa.decode(total)


@pytest.mark.parametrize("k", [3, 5, 25])
def test_sum_of_inputs_and_noise_shares_without_dropouts(network: Network, k: int) -> None:
    p = params(k)
    plain = {m: [3 * i - 7, 2**35 + i, -(2**50), i] for i, m in enumerate(p.members)}
    noise = {m: noise_share(DIM, 1000.0) for m in p.members}
    inputs = {m: sa.encode([x + n for x, n in zip(plain[m], noise[m], strict=True)])
              for m in p.members}
    outcome, _ = run(network, p, inputs)
    want = tuple(sum(plain[m][j] + noise[m][j] for m in p.members) for j in range(DIM))
    assert outcome.total == want
    assert outcome.survivors == p.members


@pytest.mark.parametrize("k", [5, 25])
@pytest.mark.parametrize("step", [sa.ADVERTISE, sa.SHARE_KEYS, sa.MASKED_INPUT,
                                  sa.CONSISTENCY, sa.UNMASK])
def test_dropouts_in_each_round(network: Network, k: int, step: str) -> None:
    p = params(k)
    inputs = random_inputs(p, seed=k)
    lost = {p.members[1]} if k == 5 else set(p.members[3:3 + k - p.threshold])
    outcome, server = run(network, p, inputs, drop={step: lost})
    # Inputs count from U3: members dropped before the masked input are not in the sum.
    before_input = step in (sa.ADVERTISE, sa.SHARE_KEYS, sa.MASKED_INPUT)
    survivors = [m for m in p.members if not (before_input and m in lost)]
    assert outcome.survivors == tuple(survivors)
    assert outcome.total == expected(inputs, survivors)
    assert server.dropped[step] == tuple(sorted(lost))


def test_dropouts_in_several_rounds(network: Network) -> None:
    p = params(25)
    inputs = random_inputs(p, seed=3)
    drop = {sa.ADVERTISE: {"m01"}, sa.SHARE_KEYS: {"m02"}, sa.MASKED_INPUT: {"m03"},
            sa.CONSISTENCY: {"m04"}, sa.UNMASK: {"m05"}}
    outcome, _ = run(network, p, inputs, drop=drop)
    survivors = [m for m in p.members if m not in {"m01", "m02", "m03"}]
    assert outcome.total == expected(inputs, survivors)


@pytest.mark.parametrize("step", [sa.ADVERTISE, sa.SHARE_KEYS, sa.MASKED_INPUT,
                                  sa.CONSISTENCY, sa.UNMASK])
def test_below_threshold_aborts(network: Network, step: str) -> None:
    p = params(5)  # t = 4
    with pytest.raises(SecAggError, match=f"{step}: 3 members took part, fewer than t = 4"):
        run(network, p, random_inputs(p, seed=1), drop={step: {"m00", "m03"}})


def test_pairwise_masks_cancel_mod_2_64(network: Network) -> None:
    p = params(5)
    zeros = {m: sa.encode([0] * DIM) for m in p.members}
    members = make_members(network, p, zeros)
    adverts = [members[m].advertise() for m in p.members]
    sent = {m: members[m].share_keys(adverts) for m in p.members}
    masked = [members[m].masked_input([e for s in sent.values() for e in s if e.recipient == m])
              for m in p.members]
    vectors = [sa.vector_from_bytes(x.vector, DIM, x.member) for x in masked]
    self_masks = [sa.prg(sa.self_mask_seed(SESSION, members[m]._b), DIM) for m in p.members]
    total = np.zeros(DIM, dtype=np.uint64)
    for y, b in zip(vectors, self_masks, strict=True):
        assert not np.array_equal(y, b)  # each carries pairwise masks
        total += y - b
    assert sa.decode(total) == (0,) * DIM


def test_masked_inputs_hide_inputs_and_server_never_holds_both_shares(
        network: Network) -> None:
    """Everything the coordinator sees, with m04 dropping before its masked input and m02
    after: no masked coordinate equals its input, and only one kind of share per member."""
    p = params(5, t=3)
    inputs = random_inputs(p, seed=9)
    members = make_members(network, p, inputs)
    server = SecAggServer(p, network.ca_cert)
    adverts = server.collect_advertisements([members[m].advertise() for m in p.members])
    forwarded = server.collect_shares({m: members[m].share_keys(adverts) for m in p.members})
    seen = [members[m].masked_input(forwarded[m]) for m in p.members if m != "m04"]
    u3 = server.collect_masked(seen)
    request = server.collect_consistency(
        [members[m].consistency(u3) for m in u3 if m != "m02"])
    outcome = server.collect_unmask([members[s.member].unmask(request)
                                     for s in request.signatures])
    for message in seen:
        y = sa.vector_from_bytes(message.vector, DIM, message.member)
        assert not np.any(y == inputs[message.member])
    assert set(server.self_mask_points).isdisjoint(server.key_points)
    assert set(server.key_points) == {"m04"}
    assert set(server.self_mask_points) == {"m00", "m01", "m02", "m03"}
    assert outcome.total == expected(inputs, ["m00", "m01", "m02", "m03"])


def test_lying_server_with_different_survivor_sets_makes_members_abort(
        network: Network) -> None:
    p = params(5)  # t = 4; the server tells m00..m02 that m04 dropped, m03 that m02 did
    inputs = random_inputs(p, seed=2)
    members = make_members(network, p, inputs)
    server = SecAggServer(p, network.ca_cert)
    adverts = server.collect_advertisements([members[m].advertise() for m in p.members])
    forwarded = server.collect_shares({m: members[m].share_keys(adverts) for m in p.members})
    server.collect_masked([members[m].masked_input(forwarded[m]) for m in p.members])
    set_a, set_b = ["m00", "m01", "m02", "m03"], ["m00", "m01", "m03", "m04"]
    signatures = [members[m].consistency(set_a) for m in ("m00", "m01", "m02")]
    signatures += [members[m].consistency(set_b) for m in ("m03", "m04")]
    for m, shown in (("m00", set_a), ("m03", set_b)):
        request = sa.UnmaskRequest(tuple(shown), ("m04",) if m == "m00" else ("m02",),
                                   tuple(s for s in signatures if s.member in shown))
        with pytest.raises(SecAggError, match="signature over the survivor set"):
            members[m].unmask(request)
        assert members[m].aborted is not None


def test_each_member_gets_t_signatures_and_fewer_make_it_abort(network: Network) -> None:
    """The coordinator sends each member its own signature and the first t - 1 others: the
    member verifies them and answers; a request with t - 1 in all is refused."""
    p = params(7)  # t = 5
    inputs = random_inputs(p, seed=5)
    members = make_members(network, p, inputs)
    server = SecAggServer(p, network.ca_cert)
    adverts = server.collect_advertisements([members[m].advertise() for m in p.members])
    forwarded = server.collect_shares({m: members[m].share_keys(adverts) for m in p.members})
    u3 = server.collect_masked([members[m].masked_input(forwarded[m]) for m in p.members])
    request = server.collect_consistency([members[m].consistency(u3) for m in u3])
    assert len(request.signatures) == 7
    sent = {m: server.unmask_request_for(m, request) for m in p.members}
    for m, one in sent.items():
        signers = [s.member for s in one.signatures]
        assert len(signers) == p.threshold and m in signers, (m, signers)
        assert signers == sorted(signers)
    assert [s.member for s in sent["m06"].signatures] == ["m00", "m01", "m02", "m03", "m06"]
    short = dataclasses.replace(sent["m06"], signatures=sent["m06"].signatures[1:])
    with pytest.raises(SecAggError, match="fewer than t = 5"):
        members["m06"].unmask(short)
    outcome = server.collect_unmask([members[m].unmask(sent[m]) for m in p.members
                                     if m != "m06"])
    assert outcome.total == expected(inputs, list(p.members))


def test_request_for_both_shares_of_one_member_is_refused(network: Network) -> None:
    p = params(5)
    inputs = random_inputs(p, seed=4)

    def both(member: str, message: object) -> object:
        if isinstance(message, sa.UnmaskRequest):
            return dataclasses.replace(message, dropped=(*message.dropped, "m01"))
        return message

    with pytest.raises(SecAggError, match=r"refused: both the self-mask share and the key "
                                          r"share of \['m01'\]"):
        run(network, p, inputs, relay=both, drop={sa.CONSISTENCY: {"m03"}})


def test_member_answers_unmask_only_once(network: Network) -> None:
    p = params(3, t=3)
    inputs = random_inputs(p, seed=5)
    members = make_members(network, p, inputs)
    run(network, p, inputs, members=members)
    with pytest.raises(SecAggError, match="out of order"):
        members["m00"].unmask(sa.UnmaskRequest(("m00", "m01"), ("m02",), ()))


def test_garbage_masked_input_drops_its_sender(network: Network) -> None:
    p = params(5)
    inputs = random_inputs(p, seed=6)
    members = make_members(network, p, inputs)
    real = members["m02"].masked_input

    def garbage(shares: Sequence[sa.EncryptedShares]) -> sa.MaskedInput:
        real(shares)
        return sa.MaskedInput("m02", b"\x00" * 5)

    members["m02"].masked_input = garbage  # type: ignore[method-assign]
    outcome, server = run(network, p, inputs, members=members)
    assert "has 32 bytes, got 5" in server.refused["m02"]
    assert outcome.total == expected(inputs, ["m00", "m01", "m03", "m04"])


def test_garbage_ciphertext_fails_the_round_cleanly(network: Network) -> None:
    p = params(3, t=3)
    inputs = random_inputs(p, seed=7)

    def tamper(member: str, message: object) -> object:
        if member == "m01" and isinstance(message, list) and message and isinstance(
                message[0], sa.EncryptedShares):
            first = message[0]
            return [dataclasses.replace(first, ciphertext=b"\x01" * len(first.ciphertext)),
                    *message[1:]]
        return message

    with pytest.raises(SecAggError, match="do not decrypt"):
        run(network, p, inputs, relay=tamper)


def test_forged_and_foreign_advertisements_are_refused(network: Network) -> None:
    p = params(5)
    inputs = random_inputs(p, seed=8)
    members = make_members(network, p, inputs)
    adverts = [members[m].advertise() for m in p.members]
    forged = dataclasses.replace(adverts[1], s_pk=adverts[2].s_pk)
    with pytest.raises(SecAggError, match="signature is invalid"):
        members["m00"].share_keys([adverts[0], forged, *adverts[2:]])
    key, cert = network.identities["outsider"]
    other = SecAggMember(p, "m00", key, cert, network.ca_cert, inputs["m00"]).advertise()
    with pytest.raises(SecAggError, match="not issued by the network CA"):
        members["m01"].share_keys([other, *adverts[1:]])
    impostor = dataclasses.replace(adverts[3], certificate=adverts[4].certificate)
    with pytest.raises(SecAggError, match="issued for \\['m04'\\], not for m03"):
        members["m02"].share_keys([*adverts[:3], impostor, adverts[4]])
    server = SecAggServer(p, network.ca_cert)
    server.collect_advertisements([other, *adverts[1:]])
    assert "not issued by the network CA" in server.refused["m00"]


def test_a_members_own_messages_must_come_back_unaltered(network: Network) -> None:
    """A member compares its own advertisement and consistency signature with what it made
    (instead of verifying its own signature): a validly signed replacement is refused."""
    p = params(5)
    inputs = random_inputs(p, seed=9)
    members = make_members(network, p, inputs)
    adverts = [members[m].advertise() for m in p.members]
    key, cert = network.identities["m00"]
    fresh = SecAggMember(p, "m00", key, cert, network.ca_cert, inputs["m00"]).advertise()
    with pytest.raises(SecAggError, match="its own advertisement was altered"):
        members["m00"].share_keys([fresh, *adverts[1:]])
    assert members["m00"].aborted is not None

    members = make_members(network, p, inputs)
    server = SecAggServer(p, network.ca_cert)
    adverts = server.collect_advertisements([members[m].advertise() for m in p.members])
    forwarded = server.collect_shares({m: members[m].share_keys(adverts) for m in p.members})
    u3 = server.collect_masked([members[m].masked_input(forwarded[m]) for m in p.members])
    request = server.collect_consistency([members[m].consistency(u3) for m in p.members])
    other = sa.sign(key, sa.consistency_payload(SESSION, "m00", u3))  # valid, not its own
    altered = tuple(dataclasses.replace(s, signature=other) if s.member == "m00" else s
                    for s in request.signatures)
    with pytest.raises(SecAggError, match="its own signature over the survivor set"):
        members["m00"].unmask(dataclasses.replace(request, signatures=altered))
    assert members["m01"].unmask(request).member == "m01"  # the unaltered request is answered


def test_too_few_advertisements_refused_by_member(network: Network) -> None:
    p = params(5)
    members = make_members(network, p, random_inputs(p, seed=10))
    adverts = [members[m].advertise() for m in p.members]
    with pytest.raises(SecAggError, match="3 survivors, fewer than t = 4"):
        members["m00"].share_keys(adverts[:3])


def test_params_refuse_bad_thresholds() -> None:
    with pytest.raises(SecAggError, match="K/2 < t <= K"):
        SecAggParams(SESSION, ("a", "b", "c", "d"), 2, 1, 1)
    with pytest.raises(SecAggError, match="0 <= c < t"):
        SecAggParams(SESSION, ("a", "b", "c"), 2, 2, 1)
    with pytest.raises(SecAggError, match="sorted and distinct"):
        SecAggParams(SESSION, ("b", "a"), 2, 1, 1)
    assert SecAggParams(SESSION, ("a", "b"), 2, 1, 1).honest == 1  # K = 2 gains nothing
    assert (sa.default_threshold(25), sa.default_colluding(25)) == (17, 1)


def test_shamir_recovers_from_any_t_shares_and_not_from_fewer() -> None:
    secret = bytes(range(32))
    rows = sa.share_secrets([secret], 4, 7)
    for chosen in ([0, 1, 2, 3], [6, 4, 2, 0], [3, 4, 5, 6]):
        assert sa.recover_secret([(i + 1, rows[i][0]) for i in chosen], 4, "s") == secret
    with pytest.raises(SecAggError, match="3 shares, 4 needed"):
        sa.recover_secret([(i + 1, rows[i][0]) for i in range(3)], 4, "s")


def test_prg_is_chacha20_keystream_and_seed_dependent() -> None:
    a, b = sa.prg(b"\x00" * 32, 3), sa.prg(b"\x01" + b"\x00" * 31, 3)
    # RFC 8439 section 2.3.2-style check: the ChaCha20 block of the all-zero key, nonce and
    # counter begins 76 b8 e0 ad a0 f1 3d 90 (the well-known test vector).
    assert a[0] == int.from_bytes(bytes.fromhex("76b8e0ada0f13d90"), "little")
    assert not np.array_equal(a, b)


def test_frame_is_the_domain_then_length_prefixed_parts() -> None:
    """The signed and derived byte strings: spelled out here, so that a faster `frame` (it
    remembers framed names) cannot change what members sign or derive keys from."""
    def part(raw: bytes) -> bytes:
        return len(raw).to_bytes(4, "big") + raw

    class Label(str):
        pass

    expected = (sa.DOMAIN + part("sessi\u00f6n".encode()) + part(b"share-keys")
                + part((7).to_bytes(8, "big")) + part(b"\x00\x01"))
    for _ in range(2):  # the second time from the remembered parts
        assert sa.frame("sessi\u00f6n", sa.SHARE_KEYS, 7, b"\x00\x01") == expected
    assert sa.frame(Label("sessi\u00f6n"), Label("share-keys"), 7, bytearray(b"\x00\x01")) \
        == expected
    assert sa.frame() == sa.DOMAIN


def test_encode_decode_round_trip_and_overflow() -> None:
    values = [0, 1, -1, 2**63 - 1, -(2**63)]
    assert sa.decode(sa.encode(values)) == tuple(values)
    with pytest.raises(SecAggError, match=r"input\[0\]"):
        sa.encode([2**63])


def test_secure_input_adds_a_discrete_gaussian_share() -> None:
    sigma, n = 50.0, 4000
    draws = np.array(noise_share(n, sigma), dtype=float)
    # Var of N_Z(0, sigma^2) is within 1e-100 of sigma^2 here; the sample variance has
    # standard error sigma^2 sqrt(2/n), so 5 standard errors is a 6e-7 false-alarm bound.
    assert abs(draws.var() - sigma**2) < 5 * sigma**2 * np.sqrt(2 / n)
    assert abs(draws.mean()) < 5 * sigma / np.sqrt(n)
    vector = secure_input([10, -10], 0.5)
    assert vector.dtype == np.uint64 and vector.shape == (2,)


def test_false_shares_are_detected_when_more_than_t_arrive() -> None:
    secret = bytes(range(32))
    rows = sa.share_secrets([secret], 3, 5)
    points = [(i + 1, rows[i][0]) for i in range(5)]
    points[4] = (5, (points[4][1] + 1) % sa.SHAMIR_PRIME)
    with pytest.raises(SecAggError, match="inconsistent"):
        sa.recover_secret(points, 3, "self-mask seed of m04")


def test_garbage_certificate_is_refused(network: Network) -> None:
    p = params(3, t=3)
    members = make_members(network, p, random_inputs(p, seed=11))
    adverts = [members[m].advertise() for m in p.members]
    junk = dataclasses.replace(adverts[2], certificate=b"junk")
    with pytest.raises(SecAggError, match="not a DER certificate"):
        members["m00"].share_keys([*adverts[:2], junk])
    with pytest.raises(SecAggError, match="the session was aborted"):
        members["m00"].masked_input([])


def test_replay_key_depends_on_session_and_survivors(network: Network) -> None:
    p = params(5)
    inputs = random_inputs(p, seed=12)
    members = make_members(network, p, inputs)
    run(network, p, inputs, members=members, drop={sa.MASKED_INPUT: {"m04"}})
    key = sa.masked_input_key(SESSION, members["m00"].survivors)
    assert key == sa.masked_input_key(SESSION, reversed(p.members))  # U2: all five
    assert key != sa.masked_input_key(SESSION, p.members[:4])
    assert key != sa.masked_input_key("session-0002", p.members)


def test_mpyc_import_leaves_arguments_and_logging_alone(tmp_path: Path) -> None:
    """mpyc parses sys.argv and configures the root logger on import; the shim hides both."""
    code = ("import logging, sys; sys.argv = ['node', '--HELP', '-C', 'x'];"
            "from bridgestat.common import secagg as sa;"
            "assert sa.recover_secret([(1, r[0]) for r in sa.share_secrets([b'a' * 32], 1, 2)]"
            "[:1], 1, 's') == b'a' * 32;"
            "root = logging.getLogger(); print(len(root.handlers), root.level, sys.argv)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0 30 ['node', '--HELP', '-C', 'x']"
