"""OpenDP measurements the node runs, with their public noise metadata.

Privacy argument (one participant = one row after the query's reduction, symmetric
distance d_in = 1):
- count: `make_count` has sensitivity 1; Laplace scale 1/eps.
- centred sum: values are clipped to [L, U], centred at c = (L+U)/2 and written as integers
  z = round(F (x - c) / H) in [-F, F] with F = 2^20 and H = (U-L)/2. OpenDP clamps to
  [-F, F] and sums the integers (sensitivity F, no row cap, unlike the unsized float sum);
  discrete Laplace with scale F/eps. In the variable's units the noise scale is H/eps.
- sum of squares: w = round(F ((x - c) / H)^2) in [0, F], the same construction.
- clip counts (optional, with a mean or change): each value coded 0 (below the public clipping
  bounds), 1 (above) or 2 (inside); `make_count_by_categories` over {0, 1} (the trailing cell
  takes the inside values and is not released). A participant is in exactly one cell, so the
  counts have L1 sensitivity 1 together: one eps buys both.
- histogram: integer category codes; `make_count_by_categories` over the public categories
  (one extra trailing cell collects missing values) has L1 sensitivity 1 for the whole
  histogram, so one eps buys every cell.
- cross products (regression): per entry i <= j the sum of round(F u_i u_j) in [-F, F],
  discrete Gaussian noise (zCDP), rho split evenly over the entries; zCDP losses add. A query
  of p terms has (p+2)(p+1)/2 entries (up to 66), so the sums are not run through OpenDP's
  clamp and sum one by one (about 10 ms each at a million rows): numpy clamps the integers to
  [-F, F] and sums them exactly in int64, and OpenDP's `make_gaussian` on that one integer
  (absolute distance) is the measurement. Adding or removing a row moves a sum of values in
  [-F, F] by at most F, so the rho charged is the measurement's `map(F)`; this one stability
  step is ours, the noise and its calibration are OpenDP's.
- quantile: OpenDP's `make_private_quantile` (exponential mechanism over public candidates);
  its error has no closed-form variance, so the release carries NaN as its noise variance.
Every other loss charged is the measurement's own `map(1)`; a query's components run on the same
participants, so their losses add (basic composition). Noise is exact discrete Laplace or
Gaussian from OpenDP (OpenSSL randomness); nothing here draws noise itself.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bridgestat.common import opendp_core as dp
from bridgestat.common.labels import CLIPPED_ABOVE, CLIPPED_BELOW, COUNT, SUM, SUM_SQUARES

dp.enable_features("contrib")

FIXED_POINT = 1 << 20
_GROWTH = 1 + 2.0**-40


@dataclass(frozen=True)
class Component:
    """One OpenDP measurement and what it releases."""

    name: str
    measurement: dp.Measurement
    epsilon: float  # OpenDP's map(1) of a pure-DP measurement (0 for a Gaussian one)
    scale: float  # noise scale in the measurement's integer output units
    unit: float  # the released statistic's units per integer output unit
    rho: float = 0.0  # OpenDP's map(d_in) of a zCDP (Gaussian) measurement
    noise: str = "laplace"  # laplace | gaussian | exponential
    sum_bound: int = 0  # > 0: the measurement takes the sum of the data clamped to +-bound

    @property
    def noise_scale(self) -> float:
        return self.scale * self.unit

    @property
    def noise_variance(self) -> float:
        """Public variance of the noise (discrete Gaussian: sigma^2, an upper bound that is
        exact to many digits at the scales used here; exponential mechanism: unknown)."""
        if self.noise == "gaussian":
            return self.scale**2 * self.unit**2
        if self.noise == "exponential":
            return math.nan
        return discrete_laplace_variance(self.scale) * self.unit**2

    def release(self, data: np.ndarray[Any, np.dtype[np.int64]]) -> Any:
        if self.sum_bound:
            return self.measurement(bounded_sum(data, self.sum_bound))
        return self.measurement(data)

    def input_doc(self) -> str:
        """What the measurement is applied to, when that step is not OpenDP's (audit log)."""
        if not self.sum_bound:
            return ""
        return (f"exact int64 sum over the rows of integers clamped to [-{self.sum_bound}, "
                f"{self.sum_bound}] (numpy); one row moves it by at most d_in = "
                f"{self.sum_bound}")

    def serialize(self) -> str:
        return str(dp.serialize(self.measurement))


def discrete_laplace_variance(scale: float) -> float:
    """Var of discrete Laplace with scale b on the integers: 2q / (1 - q)^2, q = exp(-1/b)."""
    q = math.exp(-1.0 / scale)
    return 2.0 * q / math.expm1(-1.0 / scale) ** 2


def _calibrate(build: Callable[[float], dp.Measurement], sensitivity: float,
               epsilon: float) -> tuple[dp.Measurement, float]:
    """Smallest scale near sensitivity/eps whose OpenDP map(1) does not exceed eps."""
    scale = sensitivity / epsilon
    measurement = build(scale)
    while measurement.map(1) > epsilon:
        scale *= _GROWTH
        measurement = build(scale)
    return measurement, scale


def _int_vectors() -> Any:
    return dp.vector_domain(dp.atom_domain(T=dp.i64))


_calibrated = functools.lru_cache(maxsize=1024)
"""Build and calibrate a component once per process and parameters. A component is a pure
function of its (hashable) arguments, and its OpenDP measurement is stateless: the noise is
sampled afresh on every call, so sharing one between queries shares no randomness. Without
this, every new query re-ran `_calibrate`'s builds and maps (about a sixth of a fresh node's
CPU in its first study)."""


@_calibrated
def count_component(epsilon: float, name: str = COUNT) -> Component:
    def build(scale: float) -> dp.Measurement:
        chained: dp.Measurement = (dp.t.make_count(_int_vectors(), dp.symmetric_distance())
                                   >> dp.m.then_laplace(scale))
        return chained
    measurement, scale = _calibrate(build, 1.0, epsilon)
    return Component(name, measurement, float(measurement.map(1)), scale, 1.0)


def _bounded_sum(lower: int, upper: int, epsilon: float) -> tuple[dp.Measurement, float]:
    def build(scale: float) -> dp.Measurement:
        chained: dp.Measurement = (
            dp.t.make_clamp(_int_vectors(), dp.symmetric_distance(), (lower, upper))
            >> dp.t.then_sum() >> dp.m.then_laplace(scale))
        return chained
    return _calibrate(build, float(max(abs(lower), abs(upper))), epsilon)


@_calibrated
def centred_sum_component(half_width: float, epsilon: float) -> Component:
    """Sum of z = F (x - c) / H; released in units of (x - c)."""
    measurement, scale = _bounded_sum(-FIXED_POINT, FIXED_POINT, epsilon)
    return Component(SUM, measurement, float(measurement.map(1)), scale,
                     half_width / FIXED_POINT)


@_calibrated
def sum_squares_component(half_width: float, epsilon: float) -> Component:
    """Sum of w = F ((x - c) / H)^2; released in units of (x - c)^2."""
    measurement, scale = _bounded_sum(0, FIXED_POINT, epsilon)
    return Component(SUM_SQUARES, measurement, float(measurement.map(1)), scale,
                     half_width**2 / FIXED_POINT)


@_calibrated
def histogram_component(n_categories: int, epsilon: float, name: str = "histogram"
                        ) -> Component:
    """Counts of codes 0..k-1 plus one trailing cell for anything else (missing)."""
    def build(scale: float) -> dp.Measurement:
        chained: dp.Measurement = (
            dp.t.make_count_by_categories(_int_vectors(), dp.symmetric_distance(),
                                          categories=list(range(n_categories)))
            >> dp.m.then_laplace(scale))
        return chained
    measurement, scale = _calibrate(build, 1.0, epsilon)
    return Component(name, measurement, float(measurement.map(1)), scale, 1.0)


IntArray = np.ndarray[Any, np.dtype[np.int64]]


def fixed_point(values: np.ndarray[Any, np.dtype[np.float64]], lower: float, upper: float
                ) -> tuple[IntArray, IntArray]:
    """Clip to the public bounds; return (z, w) fixed-point integers for sum and squares."""
    half = (upper - lower) / 2
    centred = (np.clip(values, lower, upper) - (lower + upper) / 2) / half
    z = np.rint(centred * FIXED_POINT).astype(np.int64)
    w = np.rint(centred * centred * FIXED_POINT).astype(np.int64)
    return z, w


SPLIT_TOLERANCE = 1e-9


@dataclass(frozen=True)
class MeanSplit:
    """How a mean's epsilon is split over count, centred sum and sum of squares.

    The centred sum drives the mean's DP error, the count enters only through
    (m - c)^2 v_N, and the sum of squares only through the sampling variance estimate.
    A query may name its own split (the coordinator's optimiser chooses one per member);
    every share must be > 0 and the shares must sum to 1 (`problem` says what is wrong).
    """

    count: float = 0.2
    sum: float = 0.5
    sum_squares: float = 0.3

    def problem(self) -> str:
        """Why the split is unusable, or "" when it is fine."""
        shares = (self.count, self.sum, self.sum_squares)
        if not all(math.isfinite(s) and 0 < s <= 1 for s in shares):  # fsum of 1e308s overflows
            return f"every share must be a number in (0, 1], got {shares}"
        if abs(math.fsum(shares) - 1) > SPLIT_TOLERANCE:
            return f"the shares must sum to 1 (within {SPLIT_TOLERANCE:g}), got {math.fsum(shares)!r}"
        return ""


MEAN_SPLIT = MeanSplit()
# Share of a mean's (or change's) loss spent on the clip counts when asked for: enough for
# counts good to about +-1/(0.05 eps) (20 at eps 1), small enough that the mean's own noise
# grows by at most 1/0.95 in scale (+11 % in DP variance of the sum).
CLIP_SHARE = 0.05


def mean_components(half_width: float, epsilon: float,
                    split: MeanSplit = MEAN_SPLIT) -> tuple[Component, Component, Component]:
    return (count_component(epsilon * split.count),
            centred_sum_component(half_width, epsilon * split.sum),
            sum_squares_component(half_width, epsilon * split.sum_squares))


CLIP_COUNTS = "clip_counts"
CLIP_LABELS = (CLIPPED_BELOW, CLIPPED_ABOVE)


def clip_count_component(epsilon: float) -> Component:
    """The noisy numbers of values below and above the public bounds (one release)."""
    return histogram_component(len(CLIP_LABELS), epsilon, CLIP_COUNTS)


def clip_codes(values: np.ndarray[Any, np.dtype[np.float64]], lower: float, upper: float
               ) -> IntArray:
    """0 for a value below `lower`, 1 above `upper`, 2 inside (the unreleased cell)."""
    codes = np.full(len(values), 2, dtype=np.int64)
    codes[values < lower] = 0
    codes[values > upper] = 1
    return codes


def bounded_sum(data: IntArray, bound: int) -> int:
    """Exact sum of the data clamped to [-bound, bound] (int64 cannot overflow below 2^62 /
    bound rows, which the check makes explicit)."""
    if len(data) and bound * len(data) >= 2**62:
        raise ValueError(f"{len(data)} rows would overflow a bounded int64 sum")
    if len(data) and (data.min() < -bound or data.max() > bound):
        data = np.clip(data, -bound, bound)
    return int(data.sum())


@_calibrated
def gaussian_sum_component(name: str, rho: float) -> Component:
    """Sum of integers in [-F, F] (a fixed-point product in [-1, 1]) with discrete Gaussian
    noise; released in units of the product. The sum is taken by `bounded_sum` (sensitivity
    F under adding or removing a row), the noise by OpenDP's integer `make_gaussian`."""
    def build(scale: float) -> dp.Measurement:
        return dp.m.make_gaussian(dp.atom_domain(T=dp.i64), dp.absolute_distance(T=dp.i64),
                                  scale)
    # rho = Delta^2 / (2 sigma^2) with Delta = F
    scale = FIXED_POINT / math.sqrt(2 * rho)
    measurement = build(scale)
    while measurement.map(FIXED_POINT) > rho:
        scale *= _GROWTH
        measurement = build(scale)
    return Component(name, measurement, 0.0, scale, 1.0 / FIXED_POINT,
                     rho=float(measurement.map(FIXED_POINT)), noise="gaussian",
                     sum_bound=FIXED_POINT)


@_calibrated
def cross_product_components(n_terms: int, rho: float) -> tuple[Component, ...]:
    """One Gaussian sum per entry (i <= j) of U'U for u = [1, u_1..u_p, u_y]."""
    m = n_terms + 1
    pairs = [(i, j) for i in range(m) for j in range(i, m)]
    per_entry = rho / len(pairs)
    return tuple(gaussian_sum_component(f"zz[{i},{j}]", per_entry) for i, j in pairs)


@_calibrated
def quantile_component(candidates: Sequence[float], alpha: float, epsilon: float) -> Component:
    """OpenDP's exponential-mechanism quantile over public candidates (floats in)."""
    def build(scale: float) -> dp.Measurement:
        return dp.m.make_private_quantile(
            dp.vector_domain(dp.atom_domain(T=float, nan=False)), dp.symmetric_distance(),
            dp.max_divergence(), [float(c) for c in candidates], alpha, scale)
    sensitivity = float(build(1.0).map(1))  # map(1) = sensitivity / scale
    measurement, scale = _calibrate(build, sensitivity, epsilon)
    return Component("quantile", measurement, float(measurement.map(1)), scale, 1.0,
                     noise="exponential")


def total_epsilon(components: Sequence[Component]) -> float:
    """Basic composition of measurements run on the same participants."""
    return math.fsum(c.epsilon for c in components)
