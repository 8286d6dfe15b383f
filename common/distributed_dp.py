"""Privacy of a sum of discrete Gaussian noise shares (the distributed discrete Gaussian).

In secure mode each member adds a share drawn from the discrete Gaussian N_Z(0, sigma^2)
(sigma = the share's scale, in fixed-point units) and the coordinator learns only the sum.
Of the survivors, at most c collude with the coordinator, so at least H = t - c honest shares
are in the sum; the colluders can subtract their own shares, so only those H count.

Kairouz, Liu and Steinke, "The Distributed Discrete Gaussian Mechanism for Federated Learning
with Secure Aggregation", ICML 2021 (arXiv 2102.06387), Proposition 14: for sigma >= 1/2,
n independent shares X_i ~ N_Z(0, sigma^2), Z = sum X_i, any Delta in Z^d and alpha >= 1,

    D_alpha(Z || Z + Delta) <= min{ alpha |Delta|_2^2 / (2 n sigma^2) + tau d,
        alpha/2 (|Delta|_2^2 / (n sigma^2) + 2 |Delta|_1 tau / (sqrt(n) sigma) + tau^2 d),
        alpha/2 (|Delta|_2 / (sqrt(n) sigma) + tau sqrt(d))^2 },
    tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k / (k + 1)).

The last two terms are linear in alpha, so the sum is rho-zCDP with rho the smaller of
1/2 (Delta_2^2/(n sigma^2) + 2 Delta_1 tau/(sqrt(n) sigma) + tau^2 d) and
1/2 (Delta_2/(sqrt(n) sigma) + tau sqrt(d))^2 (equal when Delta_1 = sqrt(d) Delta_2). The first
term is not of zCDP form (an additive tau d) and is not used. Here n is H, never K: shares of
colluders and dropped members are not noise to the adversary. Google's reference accounting
(google-research/federated, distributed_dp/accounting_utils.py) evaluates the same terms.

A share on its own (the aggregation failed and the member's noisy vector stood alone) is one
discrete Gaussian: Delta_2^2 / (2 sigma^2)-zCDP (Canonne, Kamath and Steinke, NeurIPS 2020,
Theorem 14), which is what OpenDP's integer `make_gaussian` reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_SIGMA = 0.5  # Proposition 14 assumes sigma >= 1/2
_TAU_TERMS_EXACT = 10_000  # beyond this many terms the remainder is summed in closed form


class DistributedDpError(ValueError):
    """Parameters outside the bound's assumptions; the message names the parameter."""


def tau(sigma_share: float, honest: int) -> float:
    """tau = 10 sum_{k=1}^{n-1} exp(-2 pi^2 sigma^2 k/(k+1)) for n = `honest` shares."""
    _check(sigma_share, honest)
    total = 0.0
    c = 2.0 * math.pi**2 * sigma_share**2
    last = min(honest - 1, _TAU_TERMS_EXACT)
    for k in range(1, last + 1):
        total += math.exp(-c * k / (k + 1))
    if honest - 1 > last:  # terms fall with k: bound the rest by the last one (upwards)
        total += (honest - 1 - last) * math.exp(-c * last / (last + 1))
    return 10.0 * total


def network_rho(delta_l2: float, sigma_share: float, honest: int, *, dim: int = 1,
                delta_l1: float | None = None) -> float:
    """rho (zCDP) of the sum of `honest` discrete Gaussian shares of scale `sigma_share`
    for a query of L2 sensitivity `delta_l2` (L1 `delta_l1`, default sqrt(dim) delta_l2) in
    fixed-point units over `dim` coordinates: Kairouz-Liu-Steinke Prop. 14 (module doc)."""
    if not (math.isfinite(delta_l2) and delta_l2 >= 0):
        raise DistributedDpError(f"delta_l2: must be a finite number >= 0, got {delta_l2}")
    if dim < 1:
        raise DistributedDpError(f"dim: must be >= 1, got {dim}")
    l1 = math.sqrt(dim) * delta_l2 if delta_l1 is None else delta_l1
    t = tau(sigma_share, honest)
    scale = math.sqrt(honest) * sigma_share
    cross = delta_l2**2 / scale**2 + 2.0 * l1 * t / scale + t**2 * dim
    square = (delta_l2 / scale + t * math.sqrt(dim)) ** 2
    return 0.5 * min(cross, square)


def sigma_for_rho(delta_l2: float, rho: float, honest: int, *, dim: int = 1) -> float:
    """The smallest share scale (to 1e-9 relative) whose network sum is rho-zCDP: starts at
    the tau-free value Delta/sqrt(2 rho H) and bisects upwards when tau adds to the loss."""
    if not (math.isfinite(rho) and rho > 0):
        raise DistributedDpError(f"rho: must be a finite number > 0, got {rho}")
    low = max(MIN_SIGMA, delta_l2 / math.sqrt(2.0 * rho * honest))
    if network_rho(delta_l2, low, honest, dim=dim) <= rho:
        return low
    high = 2.0 * low
    while network_rho(delta_l2, high, honest, dim=dim) > rho:
        high *= 2.0
    while high - low > 1e-9 * high:
        mid = 0.5 * (low + high)
        if network_rho(delta_l2, mid, honest, dim=dim) > rho:
            low = mid
        else:
            high = mid
    return high


def share_alone_rho(delta_l2: float, sigma_share: float) -> float:
    """rho of one share standing alone: Delta^2 / (2 sigma^2) (the discrete Gaussian)."""
    _check(sigma_share, 1)
    return delta_l2**2 / (2.0 * sigma_share**2)


@dataclass(frozen=True)
class NoiseAccount:
    """What a member charges and audits for one secure release: t, c, H = t - c, the share
    scale and sensitivity (fixed-point units), the rho of the network sum it relies on
    (charged) and the rho it would bear if the aggregation failed and its share stood alone
    (audited)."""

    threshold: int
    colluding: int
    honest: int
    sigma_share: float
    delta_l2: float
    dim: int
    rho_network: float
    rho_alone: float


def account(threshold: int, colluding: int, delta_l2: float, sigma_share: float,
            dim: int = 1) -> NoiseAccount:
    """The ledger charge (`rho_network`) and audit fields of one secure release."""
    honest = threshold - colluding
    return NoiseAccount(threshold, colluding, honest, sigma_share, delta_l2, dim,
                        network_rho(delta_l2, sigma_share, honest, dim=dim),
                        share_alone_rho(delta_l2, sigma_share))


def _check(sigma_share: float, honest: int) -> None:
    if not (math.isfinite(sigma_share) and sigma_share >= MIN_SIGMA):
        raise DistributedDpError(
            f"sigma_share: must be a finite number >= {MIN_SIGMA} (Prop. 14's assumption), "
            f"got {sigma_share}")
    if honest < 1:
        raise DistributedDpError(f"honest: at least one honest share is needed, got {honest}")
