"""Privacy-loss conversion both sides compute: what a rho-zCDP release costs as (epsilon,
delta). A node charges it against its cap; the coordinator predicts the same number when it
plans a study, so both must get it from the same place."""

from __future__ import annotations

import math
from functools import lru_cache


@lru_cache(maxsize=256)
def rho_to_epsilon(rho: float, delta: float) -> float:
    """OpenDP's zCDP -> (epsilon, delta) conversion of a rho-zCDP release. Cached: the
    ledger converts the spent rho before and after each charge, and one query's "after" is
    the next one's "before" (each conversion builds an OpenDP measurement, ~2 ms).

    Evaluated on a Gaussian measurement whose privacy map is at least rho (its scale is
    nudged down), so the epsilon returned is never below the true conversion. For rho above
    ~70283 (whatever the delta) OpenDP's conversion overflows: the result is then math.inf,
    an upper bound that every loss cap refuses.
    """
    if rho <= 0:
        return 0.0
    from bridgestat.common import opendp_core as dp  # lazily: only Gaussian releases need it

    dp.enable_features("contrib")
    scale = (1 - 1e-12) / math.sqrt(2 * rho)
    gaussian = dp.m.make_gaussian(dp.atom_domain(T=float, nan=False),
                                  dp.absolute_distance(T=float), scale)
    profile = dp.c.make_zCDP_to_approxDP(gaussian).map(1.0)
    try:
        return float(profile.epsilon(delta))
    except dp.OpenDPException as exc:
        if exc.variant != "Overflow":
            raise
        return math.inf
