"""Empirical audit of secure mode (issue 13): on worst-case neighbours the network sum an
attacker sees (t survivors, the c colluders' inputs subtracted) shows no more rho than the
members charge, a share standing alone no more than the rho_alone they record, the protocol's
output is exactly the sum of the members' `secure_input` vectors, and two negative controls
(noise divided by K instead of H; shares drawn for 4H) are caught.

Runs the core of benchmarks/secure_audit.py (its docstring: the network K = 5, t = 4, c = 1,
H = 3, the datasets, why summing `secure_input` draws is the protocol's output, the bound)
with 20,000 releases per dataset (100 worst-case protocol sessions among them, plus 33
checked-only sessions per dataset, with and without dropouts) and 5,000 per control.

Error probabilities (derived, not tuned). Each "rho_lb <= charge" fails only if the shift's
lower bound or the variance's upper bound fails, each one-sided at alpha = 1e-5: <= 2e-5 per
assertion, <= 4e-5 for the two. Expected values, in units of the attacker's noise sd: the
shift is sqrt(2 rho) = 1.414 (network, rho 1) and 2.449 (alone, rho 3), its SE sqrt(2 / n) =
0.010, z = 4.265, the variance bound factor 1.030: rho_lb ~ 0.91 and ~ 2.83. The sharpness
checks (rho_lb above half the charge) fail only if the shift estimate is > 35 SE low. The
controls at n = 5,000 (SE 0.020, variance factor 1.060): k-not-h true rho 5/3, rho_lb ~ 1.43,
missed only if the shift is ~ 14 SE low; four-h true rho 4 and 12, rho_lb ~ 3.5 and ~ 10.6.
The shift and variance checks use 6 SE (two-sided < 2e-9 each); the protocol sessions'
checks use 5 SE for the mean (< 6e-7) and chi-square bounds at 1e-6 per side for the variance.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from benchmarks import secure_audit as audit
from bridgestat.common import secagg as sa
from bridgestat.node.secagg_member import secure_input

RELEASES = 20_000
CONTROL_RELEASES = 5_000
SESSIONS = 100
WORKERS = 2


@pytest.fixture(scope="module")
def result() -> audit.Result:
    return audit.run(RELEASES, CONTROL_RELEASES, SESSIONS, WORKERS)


def test_the_network_and_its_charge_follow_the_defaults(result: audit.Result) -> None:
    acc = result.account
    assert (audit.K, acc.threshold, acc.colluding, acc.honest) == (5, 4, 1, 3)
    assert acc.delta_l2 == sa.SUM_SCALE
    assert acc.rho_network == pytest.approx(audit.RHO, rel=1e-6)
    assert acc.rho_alone == pytest.approx(acc.honest * audit.RHO, rel=1e-6)  # tau is 0 here


def test_neighbours_differ_in_one_participant_at_the_clip_bound() -> None:
    d, d_prime = audit.member_inputs(False), audit.member_inputs(True)
    assert d_prime[audit.VICTIM] - d[audit.VICTIM] == audit.DELTA
    assert {m: v for m, v in d.items() if m != audit.VICTIM} == {
        m: v for m, v in d_prime.items() if m != audit.VICTIM}


def test_every_session_outputs_the_sum_of_the_members_secure_inputs(
        result: audit.Result) -> None:
    for run in result.protocol:
        assert run.exact == run.sessions == SESSIONS + SESSIONS // 3
        assert run.without_dropout > 0
        assert run.releases.shape == (SESSIONS, 2)


def test_protocol_releases_carry_the_attackers_noise(result: audit.Result) -> None:
    """The worst-case sessions' releases: mean the honest inputs' sum, variance H shares."""
    sigma2 = audit.H * result.account.sigma_share ** 2
    for run, neighbour in zip(result.protocol, (False, True), strict=True):
        inputs = audit.member_inputs(neighbour)
        values = run.releases[:, 0]
        expected = sum(inputs[m] for m in audit.HONEST)
        assert abs(values.mean() - expected) < 5 * math.sqrt(sigma2 / len(values))
        ratio = (len(values) - 1) * values.var(ddof=1) / sigma2
        df = len(values) - 1
        assert stats.chi2.ppf(1e-6, df) < ratio < stats.chi2.ppf(1 - 1e-6, df)


def test_the_shift_is_one_clip_bound_and_the_noise_h_shares(result: audit.Result) -> None:
    net = result.network["correct"]
    se = math.sqrt(2 * net.variance / RELEASES)
    assert net.shift == pytest.approx(audit.DELTA, abs=6 * se)
    sigma2 = audit.H * result.account.sigma_share ** 2
    assert net.variance == pytest.approx(sigma2, rel=6 * math.sqrt(2 / (2 * RELEASES - 2)))


def test_network_sum_rho_lower_bound_stays_below_the_charge(result: audit.Result) -> None:
    bound, charge = result.network["correct"], result.account.rho_network
    assert bound.rho_lb <= charge, audit.describe(bound)
    assert bound.rho_lb > 0.5 * charge, audit.describe(bound)


def test_share_alone_rho_lower_bound_stays_below_its_record(result: audit.Result) -> None:
    bound, record = result.alone["correct"], result.account.rho_alone
    assert bound.rho_lb <= record, audit.describe(bound)
    assert bound.rho_lb > 0.5 * record, audit.describe(bound)


def test_control_dividing_the_noise_by_k_instead_of_h_is_caught(result: audit.Result) -> None:
    """Colluders subtract their shares, so only H of the K planned shares hide the victim."""
    bound = result.network["k-not-h"]
    assert bound.rho_lb > audit.claimed("k-not-h")[0], audit.describe(bound)


def test_control_shares_drawn_for_four_h_are_caught(result: audit.Result) -> None:
    network_claim, alone_claim = audit.claimed("four-h")
    assert result.network["four-h"].rho_lb > network_claim, audit.describe(
        result.network["four-h"])
    assert result.alone["four-h"].rho_lb > alone_claim, audit.describe(result.alone["four-h"])


def test_batched_draws_are_independent_coordinates() -> None:
    """The bulk draws a member's releases as coordinates of one `secure_input` call: adjacent
    coordinates are uncorrelated (|r| < 6 / sqrt(n), false alarm < 2e-9) and the scale is
    the share's (6 SE)."""
    n = 4_000
    sigma = audit.share_scale("correct")
    draws = np.array(sa.decode(secure_input([0] * n, sigma)), dtype=np.float64)
    r = float(np.corrcoef(draws[:-1], draws[1:])[0, 1])
    assert abs(r) < 6 / math.sqrt(n)
    assert draws.var() == pytest.approx(sigma**2, rel=6 * math.sqrt(2 / n))
