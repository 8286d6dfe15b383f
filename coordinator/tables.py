"""Result tables from members' releases: one row per member (and group cell) plus NETWORK.

Post-processing only. Each builder takes the raw `QueryResult` of one fanned-out query and
applies the estimators of `pooling`, `effects`, `meta` and `regression`; a member that failed
keeps its row with the reason in `status`, and an estimate that a noisy release cannot give
is named "not estimable" with the reason instead of stopping the table.

Members' policies are honoured here: a release marked `pooled_only` is pooled into NETWORK
but its member's row shows no estimate ("withheld by member policy"), and NETWORK itself is
withheld when that member is all it pools. Differencing the NETWORK row against the rows
shown can still reveal a withheld member when few members pool: the flag keeps members out of
league tables, it is not secrecy. A cell the member suppressed (noisy count under its
`min_group_size`) has no values; its row says so and it is left out of NETWORK.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import pandas as pd

from bridgestat.coordinator import effects, pooling
from bridgestat.coordinator.fanout import Failure
from bridgestat.coordinator.meta import MetaResult, meta_analysis
from bridgestat.coordinator.pooling import Estimate, Noisy, PoolingError
from bridgestat.coordinator.query import Query, Term
from bridgestat.coordinator.regression import (CrossProducts, RegressionResult, fit,
                                               pool_cross_products)
from bridgestat.coordinator.wire import CellRelease, MemberRelease

NETWORK = "NETWORK"
MISSING = "(missing)"
MIN_ARM_N = 20.0  # a member's arm with a smaller noisy count is "no comparison arm"
MEASURES = ("risk_difference", "log_risk_ratio", "log_odds_ratio")
WITHHELD = "withheld by member policy (pooled only)"
WITHHELD_NETWORK = "withheld by member policy (pools one member, which allows only pooling)"
Group = tuple[tuple[str, str], ...]


def suppressed_status(release: MemberRelease) -> str:
    return (f"suppressed by member policy (noisy n < {release.min_group_size:g}; "
            "not pooled)")


def _network_withheld(pooled: Sequence[MemberRelease]) -> bool:
    """NETWORK would show the one member it pools, which allows only pooled answers."""
    return len(pooled) == 1 and pooled[0].pooled_only


@dataclass(frozen=True)
class QueryResult:
    """Raw outcome of one fanned-out query: releases and failures per member."""

    query: Query
    key: str
    members: tuple[str, ...]  # network order
    releases: dict[str, MemberRelease]
    failures: dict[str, Failure]



def count_table(result: QueryResult) -> pd.DataFrame:
    return _table(result, lambda r, c: pooling.count_estimate(c.values["count"]),
                  lambda cs: pooling.pooled_count([c.values["count"] for _, c in cs]))


def mean_table(result: QueryResult) -> pd.DataFrame:
    return _table(result, lambda r, c: pooling.member_mean(r.mean_stats(c)),
                  lambda cs: pooling.pooled_mean([r.mean_stats(c) for r, c in cs]))


def paired_change_table(result: QueryResult) -> pd.DataFrame:
    """Mean change per member and pooled, with Cohen's d_z and its SE beside it."""
    change = mean_table(result)
    d_z = _table(result, lambda r, c: pooling.member_change(r.mean_stats(c)).d_z,
                 lambda cs: pooling.pooled_change([r.mean_stats(c) for r, c in cs]).d_z)
    for name in ("estimate", "se", "ci_low", "ci_high"):
        change[f"d_z_{name}" if name != "estimate" else "d_z"] = d_z[name].to_numpy()
    change["d_z_status"] = d_z["status"].to_numpy()
    return change


def histogram_table(result: QueryResult) -> pd.DataFrame:
    """Long form: one row per member (and NETWORK), group cell and category, with shares."""
    frames = [_table(result, _share(c), _pooled_share(c)).assign(category=c)
              for c in _categories(result)]
    return pd.concat(frames, ignore_index=True) if frames else _failures_only(result)


def proportion_table(result: QueryResult, wanted: tuple[str, ...]) -> pd.DataFrame:
    return _table(result, lambda r, c: pooling.proportion(*_split(c, wanted)),
                  lambda cs: pooling.pooled_proportion([_split(c, wanted) for _, c in cs]))


def followed_up_table(result: QueryResult) -> pd.DataFrame:
    """Share of participants measured at baseline who also have the follow-up occasion."""
    def split(cell: CellRelease) -> tuple[Noisy, Noisy]:
        seen = [v for k, v in cell.values.items() if k != MISSING]
        return _total(seen), cell.values[MISSING]
    return _table(result, lambda r, c: pooling.proportion(*split(c)),
                  lambda cs: pooling.pooled_proportion([split(c) for _, c in cs]))


def meta_from_table(frame: pd.DataFrame) -> MetaResult:
    """Meta-analysis of the members' rows of an effect table (estimate, se; status ok)."""
    rows = frame[(frame.member != NETWORK) & (frame.status == "ok")]
    rows = rows[rows.se.notna()]
    rows = rows[rows.se.astype(float) > 0]
    return meta_analysis(rows.estimate.astype(float).tolist(),
                         (rows.se.astype(float) ** 2).tolist(), rows.member.tolist())


def share_improved_table(result: QueryResult, improvement: str) -> pd.DataFrame:
    if improvement not in ("increase", "decrease"):
        raise ValueError(f"improvement must be 'increase' or 'decrease', got {improvement!r}")
    wanted = ("increased",) if improvement == "increase" else ("decreased",)
    return _table(result, lambda r, c: pooling.proportion(*_split(c, wanted)),
                  lambda cs: pooling.pooled_proportion([_split(c, wanted) for _, c in cs]))


def transition_table(result: QueryResult) -> pd.DataFrame:
    """Long form: share of participants (with both occasions) per "before -> after" cell."""
    frame = pd.concat([_table(result, _share(c), _pooled_share(c)).assign(transition=c)
                       for c in _categories(result)], ignore_index=True) \
        if result.releases else _failures_only(result)
    if "transition" in frame:
        parts = frame.transition.str.split(effects.ARROW, n=1, expand=True, regex=False)
        frame["from"], frame["to"] = parts[0], parts[1]
    return frame


def paired_difference_table(result: QueryResult, categories: Sequence[str]) -> pd.DataFrame:
    """Share in `categories` at follow-up minus at baseline, on the same participants."""
    wanted = frozenset(categories)
    return _table(
        result,
        lambda r, c: effects.paired_risk_difference(
            *effects.transition_counts(c.values, wanted)),
        lambda cs: effects.paired_risk_difference(*effects.pooled_transition_counts(
            [effects.transition_counts(c.values, wanted) for _, c in cs])))


def compare_table(result: QueryResult, categories: tuple[str, ...], group: str,
                  groups: tuple[str, str]) -> pd.DataFrame:
    """One row per member (and NETWORK) per measure: the share in each group, RD, log RR,
    log OR of groups[0] against groups[1]. A member whose group has a noisy count under
    MIN_ARM_N has no such group; NETWORK pools every answering member's cells."""
    rows: list[dict[str, Any]] = []
    for member in (*result.members, NETWORK):
        shares = _group_shares(result, member, categories, group, groups)
        if isinstance(shares, str):
            rows += [_row(member, (("measure", m),), None, None, shares)
                     for m in (*[f"share:{g}" for g in groups], *MEASURES)]
            continue
        loss = _loss(result, member)
        a, b = shares
        rows.append(_row(member, (("measure", f"share:{groups[0]}"),), a, loss, "ok"))
        rows.append(_row(member, (("measure", f"share:{groups[1]}"),), b, loss, "ok"))
        for measure, fn in zip(MEASURES, (effects.risk_difference, effects.log_risk_ratio,
                                          effects.log_odds_ratio), strict=True):
            rows.append(_estimate_row(member, (("measure", measure),), loss, partial(fn, a, b)))
    return pd.DataFrame(rows)


def _group_shares(result: QueryResult, member: str, categories: tuple[str, ...], group: str,
                  groups: tuple[str, str]) -> tuple[Estimate, Estimate] | str:
    """The two groups' shares of one member (or pooled), or the reason there are none."""
    if member in result.failures:
        fail = result.failures[member]
        return f"{fail.code}: {fail.message}"
    if member != NETWORK and result.releases[member].pooled_only:
        return WITHHELD
    members = [member] if member != NETWORK else [
        m for m, r in result.releases.items()
        if not any(c.suppressed for c in r.cells if c.group in {((group, g),) for g in groups})]
    if not members:
        return "no member answered" if not result.releases else \
            "nothing to pool: every member's cell is suppressed"
    if member == NETWORK and _network_withheld([result.releases[m] for m in members]):
        return WITHHELD_NETWORK
    try:
        pairs = [tuple(pooling.pooled_proportion(
            [_split(_cell_of(result.releases[m], ((group, g),)), categories)
             for m in members]) for g in groups)]
    except PoolingError as exc:
        return f"not estimable: {exc}"
    a, b = pairs[0]
    small = [g for g, e in zip(groups, (a, b), strict=True) if e.n < MIN_ARM_N]
    if small and member != NETWORK:  # decided on the noisy count, like did_table
        return f"no {small[0]} group (noisy n < {MIN_ARM_N:g})"
    return a, b


def _cell_of(release: MemberRelease, group: Group) -> CellRelease:
    for cell in release.cells:
        if cell.group == group:
            if cell.suppressed:
                raise PoolingError(f"cell {dict(group)} {suppressed_status(release)}")
            return cell
    raise PoolingError(f"no cell {dict(group)} in the release")


def _loss(result: QueryResult, member: str) -> float | None:
    if member == NETWORK:
        return max((r.charged for r in result.releases.values()), default=None)
    release = result.releases.get(member)
    return release.charged if release else None


def did_table(result: QueryResult, group: str, groups: tuple[str, str]) -> pd.DataFrame:
    """Per member: change in groups[0] minus change in groups[1] (members with both arms);
    NETWORK: fixed-effect pool of those members' DiDs (within-member contrasts only)."""
    rows: list[dict[str, Any]] = []
    estimates: list[Estimate] = []
    pooled: list[MemberRelease] = []
    for member in result.members:
        failed = _failed_row(result, member)
        if failed is not None:
            rows.append(failed)
            continue
        release = result.releases[member]
        arms = [_arm_change(release, group, g) for g in groups]
        missing = [g for g, arm in zip(groups, arms, strict=True) if arm is None]
        if missing:
            rows.append(_row(member, (), None, release.charged,
                             f"no {missing[0]} arm (noisy n < {MIN_ARM_N:g} or none)"))
            continue
        assert arms[0] is not None and arms[1] is not None
        did = effects.difference(arms[0], arms[1])
        estimates.append(did)
        pooled.append(release)
        rows.append(_row(member, (), None, release.charged, WITHHELD) if release.pooled_only
                    else _row(member, (), did, release.charged, "ok"))
    rows.append(_row(NETWORK, (), None, _loss(result, NETWORK), WITHHELD_NETWORK)
                if _network_withheld(pooled) else
                _pooled_did(estimates, _loss(result, NETWORK)))
    return pd.DataFrame(rows)


def _arm_change(release: MemberRelease, group: str, arm: str) -> Estimate | None:
    """One arm's mean change, or None when the arm is absent (decided on the noisy count)."""
    try:
        change = pooling.member_mean(release.mean_stats(_cell_of(release, ((group, arm),))))
    except PoolingError:
        return None
    return change if change.n >= MIN_ARM_N else None


def _pooled_did(estimates: list[Estimate], loss: float | None) -> dict[str, Any]:
    if not estimates:
        return _row(NETWORK, (), None, loss, "no member has both arms")
    weights = [1 / e.se**2 for e in estimates]
    total = sum(weights)
    value = sum(w * e.estimate for w, e in zip(weights, estimates, strict=True)) / total
    sampling = sum(w**2 * (e.se_sampling or 0) ** 2 for w, e in zip(weights, estimates,
                                                                     strict=True)) / total**2
    dp_part = sum(w**2 * (e.se_dp or 0) ** 2 for w, e in zip(weights, estimates,
                                                             strict=True)) / total**2
    pooled = pooling.make_estimate(value, sampling, dp_part, sum(e.n for e in estimates))
    return _row(NETWORK, (), pooled, loss, "ok")


def cross_products(release: MemberRelease, cell: CellRelease, names: tuple[str, ...]
                   ) -> CrossProducts:
    entries = {}
    for name, value in cell.values.items():
        i, j = (int(k) for k in name[3:-1].split(","))
        entries[(i, j)] = value
    return CrossProducts(names, release.term_bounds, entries)


def term_names(terms: Sequence[Term]) -> tuple[str, ...]:
    """Readable names: column, column=category, or column change."""
    names = []
    for term in terms:
        name = term.column
        if term.category:
            name = f"{name}={term.category}"
        elif term.baseline is not None and term.occasion is not None:
            name = f"{name} change {term.baseline.target_month}->{term.occasion.target_month}"
        elif term.occasion is not None and term.occasion.target_month:
            name = f"{name}@{term.occasion.target_month}"
        names.append(name)
    return tuple(names)


def regression_fits(result: QueryResult, *, replicates: int = 2000, seed: int = 0
                    ) -> dict[str, RegressionResult | str]:
    """Per-member fits and the pooled NETWORK fit (summed cross products)."""
    names = term_names(result.query.terms)
    fits: dict[str, RegressionResult | str] = {}
    members: list[CrossProducts] = []
    pooled: list[MemberRelease] = []
    for member in result.members:
        if member in result.failures:
            fail = result.failures[member]
            fits[member] = f"{fail.code}: {fail.message}"
            continue
        release = result.releases[member]
        if release.cells[0].suppressed:
            fits[member] = suppressed_status(release)
            continue
        try:
            cp = cross_products(release, release.cells[0], names)
            members.append(cp)
            pooled.append(release)
            fits[member] = WITHHELD if release.pooled_only else \
                fit(cp, replicates=replicates, seed=seed)
        except PoolingError as exc:
            fits[member] = f"not estimable: {exc}"
    if _network_withheld(pooled):
        fits[NETWORK] = WITHHELD_NETWORK
        return fits
    try:
        fits[NETWORK] = fit(pool_cross_products(members), replicates=replicates, seed=seed)
    except PoolingError as exc:
        fits[NETWORK] = f"not estimable: {exc}"
    return fits


def regression_table(fits: dict[str, RegressionResult | str]) -> pd.DataFrame:
    """Long form: one row per member (and NETWORK) per coefficient."""
    rows: list[dict[str, Any]] = []
    for member, fitted in fits.items():
        if isinstance(fitted, str):
            rows.append({"member": member, "term": None, "status": fitted})
            continue
        status = f"unstable: {fitted.warnings[0]}" if fitted.warnings else "ok"
        for coef in fitted.coefficients:
            rows.append({"member": member, "term": coef.name, "estimate": coef.estimate,
                         "se": coef.se, "ci_low": coef.ci_low, "ci_high": coef.ci_high,
                         "se_ols": coef.se_ols, "n": fitted.n, "status": status})
    return pd.DataFrame(rows)


def quantile_table(members: QueryResult, grid: QueryResult, q: float,
                   candidates: tuple[float, ...]) -> pd.DataFrame:
    """Members' OpenDP quantiles, and the NETWORK quantile from the pooled histogram."""
    rows: list[dict[str, Any]] = []
    for member in members.members:
        failed = _failed_row(members, member)
        if failed is not None:
            rows.append(failed)
            continue
        release = members.releases[member]
        points = release.cells[0].points or {}
        loss = release.charged + (_loss(grid, member) or 0.0)
        if release.pooled_only:
            rows.append(_row(member, (), None, loss, WITHHELD))
            continue
        row = _row(member, (), None, loss, "ok (exponential mechanism: no closed-form SE)")
        row["estimate"] = points.get("quantile")
        rows.append(row)
    pooled = [grid.releases[m] for m in grid.members
              if m in grid.releases and not grid.releases[m].cells[0].suppressed]
    if _network_withheld(pooled):
        rows.append(_row(NETWORK, (), None, _loss(grid, NETWORK), WITHHELD_NETWORK))
        return pd.DataFrame(rows)
    counts = [_bin_counts(r) for r in pooled]
    try:
        rows.append(_row(NETWORK, (), _pooled_quantile(counts, q, candidates),
                         _loss(grid, NETWORK), "ok (pooled histogram)"))
    except PoolingError as exc:
        rows.append(_row(NETWORK, (), None, _loss(grid, NETWORK), f"not estimable: {exc}"))
    return pd.DataFrame(rows)


def _bin_counts(release: MemberRelease) -> list[Noisy]:
    return [v for k, v in release.cells[0].values.items() if k != MISSING]


def _pooled_quantile(counts: list[list[Noisy]], q: float, candidates: tuple[float, ...]
                     ) -> Estimate:
    """Quantile of the pooled noisy CDF at the bin edges (linear inside a bin); 95 % CI where
    the CDF's own 95 % band crosses q. Its SE is read off the CI (half-width / 1.96)."""
    if not counts:
        raise PoolingError("nothing to pool: no member releases")
    bins = [pooling.sum_noisy([c[j] for c in counts]) for j in range(len(counts[0]))]
    cdf = []
    for j in range(1, len(bins)):  # the CDF at candidate j (interior edges)
        below, above = pooling.sum_noisy(bins[:j]), pooling.sum_noisy(bins[j:])
        cdf.append(pooling.proportion(below, above))
    edges = list(candidates[1:-1])
    point = _crossing(edges, [e.estimate for e in cdf], q, candidates)
    high = _crossing(edges, [e.ci_low for e in cdf], q, candidates)
    low = _crossing(edges, [e.ci_high for e in cdf], q, candidates)
    n = sum(b.value for b in bins)
    se = (high - low) / (2 * pooling.Z95)
    return pooling.Estimate(point, se, low, high, n)


def _crossing(edges: list[float], values: list[float], q: float,
              candidates: tuple[float, ...]) -> float:
    """Where a (noisy, made monotone) CDF through the edges first reaches q."""
    xs = [candidates[0], *edges, candidates[-1]]
    ys = [0.0, *values, 1.0]
    running = 0.0
    for i in range(1, len(ys)):
        running = max(running, min(1.0, ys[i]))
        ys[i] = running
    for i in range(1, len(xs)):
        if ys[i] >= q:
            lo_y = ys[i - 1]
            if ys[i] == lo_y:
                return xs[i]
            return xs[i - 1] + (q - lo_y) / (ys[i] - lo_y) * (xs[i] - xs[i - 1])
    return xs[-1]


def _split(cell: CellRelease, wanted: tuple[str, ...]) -> tuple[Noisy, Noisy]:
    """(Y1, Y0): noisy counts in and out of `wanted`, the missing cell left out."""
    unknown = [w for w in wanted if w not in cell.values]
    if unknown:
        raise PoolingError(f"no category {unknown[0]!r} in the release")
    inside = [v for k, v in cell.values.items() if k in wanted]
    outside = [v for k, v in cell.values.items() if k not in wanted and k != MISSING]
    return _total(inside), _total(outside)


def _total(values: Sequence[Noisy]) -> Noisy:
    return Noisy(sum(v.value for v in values), sum(v.variance for v in values))


def _share(category: str) -> Callable[[MemberRelease, CellRelease], Estimate]:
    return lambda r, c: pooling.proportion(*_split(c, (category,)))


def _pooled_share(category: str) -> Callable[[list[tuple[MemberRelease, CellRelease]]], Estimate]:
    return lambda cs: pooling.pooled_proportion([_split(c, (category,)) for _, c in cs])


def _categories(result: QueryResult) -> list[str]:
    for release in result.releases.values():
        for cell in release.cells:
            if not cell.suppressed:
                return [k for k in cell.values if k != MISSING]
    return []


MemberFn = Callable[[MemberRelease, CellRelease], Estimate]
PooledFn = Callable[[list[tuple[MemberRelease, CellRelease]]], Estimate]


def _table(result: QueryResult, member_fn: MemberFn, pooled_fn: PooledFn) -> pd.DataFrame:
    """Per-member rows and a NETWORK row per group cell, failures named in `status`."""
    rows: list[dict[str, Any]] = []
    for group in _groups(result):
        pairs = []
        for member in result.members:
            if member in result.failures:
                fail = result.failures[member]
                rows.append(_row(member, group, None, None, f"{fail.code}: {fail.message}"))
                continue
            release = result.releases[member]
            cell = next(c for c in release.cells if c.group == group)
            if cell.suppressed:
                rows.append(_row(member, group, None, release.charged,
                                 suppressed_status(release)))
                continue
            pairs.append((release, cell))
            rows.append(_row(member, group, None, release.charged, WITHHELD)
                        if release.pooled_only else
                        _estimate_row(member, group, release.charged,
                                      partial(member_fn, release, cell)))
        rows.append(_network_row(result, group, pairs, pooled_fn))
    return pd.DataFrame(rows)


def _network_row(result: QueryResult, group: Group,
                 pairs: list[tuple[MemberRelease, CellRelease]], pooled_fn: PooledFn
                 ) -> dict[str, Any]:
    loss = max((r.charged for r, _ in pairs), default=None)
    if not pairs:
        reason = "no member answered" if not result.releases else \
            "nothing to pool: every member's cell is suppressed"
        return _row(NETWORK, group, None, None, reason)
    if _network_withheld([r for r, _ in pairs]):
        return _row(NETWORK, group, None, loss, WITHHELD_NETWORK)
    return _estimate_row(NETWORK, group, loss or 0.0, partial(pooled_fn, pairs))


def _groups(result: QueryResult) -> list[Group]:
    for release in result.releases.values():
        return [c.group for c in release.cells]
    return [()]


def _estimate_row(member: str, group: Group, loss: float,
                  compute: Callable[[], Estimate]) -> dict[str, Any]:
    try:
        return _row(member, group, compute(), loss, "ok")
    except PoolingError as exc:
        return _row(member, group, None, loss, f"not estimable: {exc}")


def _row(member: str, group: Group, est: Estimate | None, loss: float | None,
         status: str) -> dict[str, Any]:
    row: dict[str, Any] = {"member": member, **dict(group)}
    fields = ("estimate", "se", "ci_low", "ci_high", "n", "sd", "se_sampling", "se_dp")
    values = asdict(est) if est is not None else {}
    row.update({f: values.get(f) for f in fields})
    row["loss"] = loss
    row["status"] = status
    return row


def _failed_row(result: QueryResult, member: str) -> dict[str, Any] | None:
    """The row naming a member's failure, or None when it answered."""
    fail = result.failures.get(member)
    return None if fail is None else _row(member, (), None, None,
                                          f"{fail.code}: {fail.message}")


def _failures_only(result: QueryResult) -> pd.DataFrame:
    return pd.DataFrame([_row(m, (), None, None, f"{f.code}: {f.message}")
                         for m, f in result.failures.items()])
