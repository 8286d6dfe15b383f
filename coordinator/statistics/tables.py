"""Result tables from members' releases: one row per member (and group cell) plus NETWORK.

Post-processing only. Each builder takes the raw `QueryResult` of one fanned-out query and
applies the estimators of `pooling`, `effects`, `meta` and `regression`; a member that failed
keeps its row with the reason in `status`, and an estimate that a noisy release cannot give
is named "not estimable" with the reason instead of stopping the table.

Members' policies are honoured here, by one rule for every builder
(`QueryResult.member_cells`): a release marked `pooled_only` is pooled into NETWORK but its
member's row shows no estimate ("withheld by member policy"), and NETWORK itself is withheld
when that member is all it pools. Differencing the NETWORK row against the rows shown can
still reveal a withheld member when few members pool: the flag keeps members out of league
tables, it is not secrecy. A cell the member suppressed (noisy count under its
`min_group_size`) has no values; a row that needs it says so, whatever the member's policy
on comparison, and it is left out of NETWORK.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import pandas as pd

from bridgestat.common.labels import (
    ABSENT,
    CLIPPED_ABOVE,
    CLIPPED_BELOW,
    MISSING,
    PRESENCE,
    PRESENCE_CELLS,
    PRESENT,
    SUM,
)
from bridgestat.coordinator.client.fanout import Failure
from bridgestat.coordinator.client.query import Query, Term
from bridgestat.coordinator.client.wire import CellRelease, MemberRelease
from bridgestat.coordinator.statistics import effects, planning, pooling
from bridgestat.coordinator.statistics.meta import MetaError, MetaResult, meta_analysis
from bridgestat.coordinator.statistics.pooling import Estimate, Noisy, PoolingError
from bridgestat.coordinator.statistics.regression import (
    CrossProducts,
    RegressionResult,
    fit,
    pool_cross_products,
)

NETWORK = "NETWORK"
MIN_ARM_N = 20.0  # a member's arm with a smaller noisy count is "no comparison arm"
MEASURES = ("risk_difference", "log_risk_ratio", "log_odds_ratio")
WITHHELD = "withheld by member policy (pooled only)"
WITHHELD_NETWORK = "withheld by member policy (pools one member, which allows only pooling)"
Group = tuple[tuple[str, str], ...]


def suppressed_status(release: MemberRelease, group: Group = ()) -> str:
    """Why a row has no estimate for a suppressed cell; `group` names the cell for a row that
    reads several."""
    cell = f"cell {dict(group)}: " if group else ""
    return (f"suppressed by member policy ({cell}noisy n < {release.min_group_size:g}; "
            "not pooled)")


@dataclass(frozen=True)
class MemberCells:
    """One member's answer as every table may use it (see `QueryResult.member_cells`)."""

    release: MemberRelease | None  # None: the member failed
    cells: tuple[CellRelease, ...]  # the cells asked for when they are pooled, else ()
    status: str  # the member's row: "ok" (show its estimate), WITHHELD, or why not pooled

    @property
    def pooled(self) -> bool:
        """Whether the cells go into NETWORK."""
        return bool(self.cells)

    @property
    def shown(self) -> bool:
        """Whether the member's row shows its estimate."""
        return self.status == "ok"

    @property
    def loss(self) -> float | None:
        """The loss the member was charged (None: it failed)."""
        return self.release.charged if self.release is not None else None

    def pairs(self) -> list[tuple[MemberRelease, CellRelease]]:
        """(release, cell) per pooled cell, as the estimators take them."""
        return [(self.release, cell) for cell in self.cells] if self.release else []


@dataclass(frozen=True)
class QueryResult:
    """Raw outcome of one fanned-out query: releases and failures per member."""

    query: Query
    key: str
    members: tuple[str, ...]  # network order
    releases: dict[str, MemberRelease]
    failures: dict[str, Failure]

    def member_cells(self, member: str, groups: Sequence[Group] = ((),)) -> MemberCells:
        """`member`'s cells `groups` (default: the one cell of an ungrouped query) under the
        rule every table applies. A failed member's row shows its failure. If one of the
        cells is missing or suppressed (noisy count under the member's `min_group_size`) the
        row says so and none is pooled, whatever the member's policy on comparison. Otherwise
        the cells are pooled into NETWORK and the row shows its estimate ("ok"), or WITHHELD
        when the member allows pooling only."""
        fail = self.failures.get(member)
        if fail is not None:
            return MemberCells(None, (), f"{fail.code}: {fail.message}")
        release = self.releases[member]
        found = {cell.group: cell for cell in release.cells}
        for group in groups:
            if group not in found:
                return MemberCells(release, (),
                                   f"not estimable: no cell {dict(group)} in the release")
            if found[group].suppressed:  # a one-cell row is that cell's: no need to name it
                named = group if len(groups) > 1 else ()
                return MemberCells(release, (), suppressed_status(release, named))
        return MemberCells(release, tuple(found[g] for g in groups),
                           WITHHELD if release.pooled_only else "ok")


def _network_withheld(pooled: Sequence[MemberCells]) -> bool:
    """NETWORK would show the one member it pools, which allows only pooled answers."""
    return len(pooled) == 1 and not pooled[0].shown


def _nothing_pooled(result: QueryResult) -> str:
    """Why NETWORK pools no member."""
    return "no member answered" if not result.releases else \
        "nothing to pool: every member's cell is suppressed"


def count_table(result: QueryResult) -> pd.DataFrame:
    return _table(result, lambda r, c: pooling.count_estimate(c.values["count"]),
                  lambda cs: pooling.pooled_count([c.values["count"] for _, c in cs]))


def mean_table(result: QueryResult) -> pd.DataFrame:
    return _table(result, lambda r, c: pooling.member_mean(r.mean_stats(c)),
                  lambda cs: pooling.pooled_mean([r.mean_stats(c) for r, c in cs]))


def paired_change_table(result: QueryResult, reference_sd: float | None = None
                        ) -> pd.DataFrame:
    """Mean change per member and pooled, with Cohen's d_z and its SE beside it. A d_z whose
    noisy SD is not well determined (`pooling.d_z_flag`, judged against the clip's
    half-width / 3 or `reference_sd`) keeps its value and says so in `d_z_status`."""
    change = mean_table(result)
    half = change_half_width(result)
    d_z = _table(result,
                 lambda r, c: pooling.member_change(r.mean_stats(c), half, reference_sd).d_z,
                 lambda cs: pooling.pooled_change([r.mean_stats(c) for r, c in cs], half,
                                                  reference_sd).d_z)
    for name in ("estimate", "se", "ci_low", "ci_high"):
        change[f"d_z_{name}" if name != "estimate" else "d_z"] = d_z[name].to_numpy()
    flags = d_z["flag"] if "flag" in d_z else pd.Series([None] * len(d_z))
    change["d_z_status"] = [f"flagged: {flag}" if status == "ok" and isinstance(flag, str)
                            else status for status, flag in zip(d_z["status"], flags,
                                                                strict=True)]
    return change


def with_clip_counts(frame: pd.DataFrame, result: QueryResult) -> pd.DataFrame:
    """A mean's or change's table with, when its query asked for them, the noisy numbers of
    values the clip cut below and above per row (NETWORK: summed over the members it pools),
    their noise SD and the share of the row's noisy n they make (post-processing; rows in
    `_table`'s order, so the columns line up)."""
    if not result.query.clip_counts:
        return frame
    frame = frame.copy()
    for name in (CLIPPED_BELOW, CLIPPED_ABOVE):
        counts = _table(result, partial(_member_clipped, name), partial(_pooled_clipped, name))
        frame[name] = counts["estimate"].to_numpy()
        frame[f"{name}_se"] = counts["se"].to_numpy()
    total = frame[CLIPPED_BELOW].astype(float) + frame[CLIPPED_ABOVE].astype(float)
    n = frame["n"].astype(float)
    frame["clipped_share"] = (total / n).where(n > 0)
    return frame


def _member_clipped(name: str, release: MemberRelease, cell: CellRelease) -> Estimate:
    return pooling.count_estimate(_clipped(cell, name))


def _pooled_clipped(name: str, cells: Sequence[tuple[MemberRelease, CellRelease]]
                    ) -> Estimate:
    return pooling.pooled_count([_clipped(c, name) for _, c in cells])


def _clipped(cell: CellRelease, name: str) -> Noisy:
    if name not in cell.values:
        raise PoolingError("the member released no clip counts (its node predates them)")
    return cell.values[name]


def change_half_width(result: QueryResult) -> float | None:
    """Half-width H of the change's public clip: the query's clip, else (the schema's
    default, [-(U - L), U - L]) read off a release's public noise variance of the centred
    sum, v_S = Var(discrete Laplace, scale F / eps_S) (H / F)^2, at the sum's own epsilon
    eps_S as the node spent it (a node that predates per-value losses: the query's split,
    the node's default less the clip counts' share when asked for; a node that ignores the
    split would make that guess wrong)."""
    if result.query.clip is not None:
        low, high = result.query.clip
        return (high - low) / 2
    for release in result.releases.values():
        for cell in release.cells:
            noise = cell.values.get(SUM) if not cell.suppressed else None
            epsilon = cell.epsilons.get(SUM) or _requested_sum_epsilon(result.query)
            if noise is not None and noise.variance > 0 and epsilon > 0:
                unit = planning.fixed_point_variance(1.0, epsilon)
                return float((noise.variance / unit) ** 0.5)
    return None


def _requested_sum_epsilon(query: Query) -> float:
    share = query.split[1] if query.split else planning.HAND_SPLIT.sum
    if query.clip_counts:
        share *= 1 - planning.CLIP_SHARE
    return query.epsilon * share


def histogram_table(result: QueryResult) -> pd.DataFrame:
    """Long form: one row per member (and NETWORK), group cell and category, with shares."""
    return _long_table(result, "category")


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


ATTRITION_ROWS = (PRESENT, ABSENT, "difference")
"""The `cell` of an attrition table's rows: intake mean with / without the follow-up
occasion, and present minus absent."""


def attrition_table(result: QueryResult) -> pd.DataFrame:
    """Do completers differ at intake? Per member and NETWORK (long form, column `cell`): the
    intake mean of those with (present) and without (absent) the follow-up occasion, from a
    mean split by presence, and present minus absent (`pooling.attrition`: NETWORK pools each
    cell's sums over the members, then differences). A member whose cell is missing or
    suppressed has no row values and is not pooled (the two cells go together)."""
    groups = [((PRESENCE, cell),) for cell in PRESENCE_CELLS]
    rows: list[dict[str, Any]] = []
    for member in result.members:
        answer = result.member_cells(member, groups)
        rows += _attrition_rows(member, answer.loss, answer.status,
                                [answer] if answer.shown else [])
    pooled = _pooled(result, groups)
    status = (_nothing_pooled(result) if not pooled
              else WITHHELD_NETWORK if _network_withheld(pooled) else "ok")
    rows += _attrition_rows(NETWORK, _loss(result, NETWORK), status,
                            pooled if status == "ok" else [])
    return pd.DataFrame(rows)


def _attrition_rows(member: str, loss: float | None, status: str,
                    answers: Sequence[MemberCells]) -> list[dict[str, Any]]:
    """The three rows of one member (or NETWORK, pooling `answers`); `status` without any."""
    if not answers:
        return [_row(member, (("cell", c),), None, loss, status) for c in ATTRITION_ROWS]
    cells = [[release.mean_stats(cell) for a in answers for release, cell in a.pairs()[i:i + 1]]
             for i in range(len(PRESENCE_CELLS))]
    found: list[Estimate | str] = []
    mean = pooling.pooled_mean if member == NETWORK else \
        (lambda stats: pooling.member_mean(stats[0]))
    for stats in cells:
        try:
            found.append(mean(stats))
        except PoolingError as exc:
            found.append(f"not estimable: {exc}")
    present, absent = found
    if isinstance(present, Estimate) and isinstance(absent, Estimate):
        found.append(pooling.difference(present, absent))
    else:
        found.append(next(f for f in found if isinstance(f, str)))
    return [_row(member, (("cell", c),), e if isinstance(e, Estimate) else None, loss,
                 "ok" if isinstance(e, Estimate) else e)
            for c, e in zip(ATTRITION_ROWS, found, strict=True)]


def meta_from_table(frame: pd.DataFrame) -> MetaResult:
    """Meta-analysis of the members' rows of an effect table (estimate, se; status ok).
    A secure table (NETWORK only, `attrs["secure"]`) has no member rows: refused."""
    if frame.attrs.get("secure"):
        raise MetaError(f"a meta-analysis needs each member's estimate; this table comes from "
                        f"secure aggregation ({frame.attrs['secure']}), which releases only "
                        "the NETWORK sum: run it without secure=True to meta-analyse")
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
    frame = _long_table(result, "transition")
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
    cells = [((group, g),) for g in groups]
    if member != NETWORK:
        answer = result.member_cells(member, cells)
        if not answer.shown:
            return answer.status
        pooled = [answer]
    else:
        pooled = _pooled(result, cells)
        if not pooled:
            return _nothing_pooled(result)
        if _network_withheld(pooled):
            return WITHHELD_NETWORK
    try:
        a, b = (pooling.pooled_proportion([_split(p.cells[i], categories) for p in pooled])
                for i in range(len(groups)))
    except PoolingError as exc:
        return f"not estimable: {exc}"
    small = [g for g, e in zip(groups, (a, b), strict=True) if e.n < MIN_ARM_N]
    if small and member != NETWORK:  # decided on the noisy count, like did_table
        return f"no {small[0]} group (noisy n < {MIN_ARM_N:g})"
    return a, b


def _pooled(result: QueryResult, groups: Sequence[Group] = ((),)) -> list[MemberCells]:
    """The members' answers that NETWORK pools, in network order."""
    return [a for a in (result.member_cells(m, groups) for m in result.members) if a.pooled]


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
    pooled: list[MemberCells] = []
    for member in result.members:
        answer = result.member_cells(member, [((group, g),) for g in groups])
        did = _member_did(answer, groups)
        if isinstance(did, str):
            rows.append(_row(member, (), None, answer.loss, did))
            continue
        estimates.append(did)
        pooled.append(answer)
        rows.append(_row(member, (), did if answer.shown else None, answer.loss, answer.status))
    rows.append(_row(NETWORK, (), None, _loss(result, NETWORK), WITHHELD_NETWORK)
                if _network_withheld(pooled) else
                _pooled_did(estimates, _loss(result, NETWORK)))
    return pd.DataFrame(rows)


def _member_did(answer: MemberCells, groups: tuple[str, str]) -> Estimate | str:
    """A member's difference in differences, or why it has none (and is not pooled)."""
    if not answer.pooled:
        return answer.status
    arms = [_arm_change(release, cell) for release, cell in answer.pairs()]
    missing = [g for g, arm in zip(groups, arms, strict=True) if arm is None]
    if missing:
        return f"no {missing[0]} arm (noisy n < {MIN_ARM_N:g} or none)"
    assert arms[0] is not None and arms[1] is not None
    return effects.difference(arms[0], arms[1])


def _arm_change(release: MemberRelease, cell: CellRelease) -> Estimate | None:
    """One arm's mean change, or None when it has too few (decided on the noisy count)."""
    try:
        change = pooling.member_mean(release.mean_stats(cell))
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
    pooled: list[MemberCells] = []
    for member in result.members:
        answer = result.member_cells(member)
        if not answer.pooled:
            fits[member] = answer.status
            continue
        try:
            [(release, cell)] = answer.pairs()
            cp = cross_products(release, cell, names)
            members.append(cp)
            pooled.append(answer)
            fits[member] = fit(cp, replicates=replicates, seed=seed) if answer.shown \
                else answer.status
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
        answer = members.member_cells(member)
        loss = None if answer.loss is None else answer.loss + (_loss(grid, member) or 0.0)
        if not answer.shown:
            rows.append(_row(member, (), None, loss, answer.status))
            continue
        row = _row(member, (), None, loss, "ok (exponential mechanism: no closed-form SE)")
        row["estimate"] = (answer.cells[0].points or {}).get("quantile")
        rows.append(row)
    pooled = _pooled(grid)
    if _network_withheld(pooled):
        rows.append(_row(NETWORK, (), None, _loss(grid, NETWORK), WITHHELD_NETWORK))
        return pd.DataFrame(rows)
    counts = [_bin_counts(a.cells[0]) for a in pooled]
    try:
        rows.append(_row(NETWORK, (), _pooled_quantile(counts, q, candidates),
                         _loss(grid, NETWORK), "ok (pooled histogram)"))
    except PoolingError as exc:
        rows.append(_row(NETWORK, (), None, _loss(grid, NETWORK), f"not estimable: {exc}"))
    return pd.DataFrame(rows)


def _bin_counts(cell: CellRelease) -> list[Noisy]:
    return [v for k, v in cell.values.items() if k != MISSING]


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


def _long_table(result: QueryResult, column: str) -> pd.DataFrame:
    """Shares per category, one `_table` per category named in `column`. With no category to
    read (every cell suppressed) the member and NETWORK rows still say why; with no member
    answering, only the failures."""
    if not result.releases:
        return _failures_only(result)
    categories = _categories(result)
    if not categories:  # every cell suppressed: no estimator is called
        return _table(result, _share(""), _pooled_share(""))
    return pd.concat([_table(result, _share(c), _pooled_share(c)).assign(**{column: c})
                      for c in categories], ignore_index=True)


MemberFn = Callable[[MemberRelease, CellRelease], Estimate]
PooledFn = Callable[[list[tuple[MemberRelease, CellRelease]]], Estimate]


def _table(result: QueryResult, member_fn: MemberFn, pooled_fn: PooledFn) -> pd.DataFrame:
    """Per-member rows and a NETWORK row per group cell, failures named in `status`."""
    rows: list[dict[str, Any]] = []
    for group in _groups(result):
        answers = [result.member_cells(member, (group,)) for member in result.members]
        rows += [_member_row(member, group, answer, member_fn)
                 for member, answer in zip(result.members, answers, strict=True)]
        rows.append(_network_row(result, group, [a for a in answers if a.pooled], pooled_fn))
    return pd.DataFrame(rows)


def _member_row(member: str, group: Group, answer: MemberCells, member_fn: MemberFn
                ) -> dict[str, Any]:
    """A member's row of one group cell: its estimate, or why it shows none."""
    if not answer.shown:
        return _row(member, group, None, answer.loss, answer.status)
    [(release, cell)] = answer.pairs()
    return _estimate_row(member, group, release.charged, partial(member_fn, release, cell))


def _network_row(result: QueryResult, group: Group, pooled: list[MemberCells],
                 pooled_fn: PooledFn) -> dict[str, Any]:
    """NETWORK's row of one group cell, from the members' answers it pools."""
    pairs = [pair for answer in pooled for pair in answer.pairs()]
    loss = max((r.charged for r, _ in pairs), default=None)
    if not pairs:
        return _row(NETWORK, group, None, None, _nothing_pooled(result))
    if _network_withheld(pooled):
        return _row(NETWORK, group, None, loss, WITHHELD_NETWORK)
    return _estimate_row(NETWORK, group, loss, partial(pooled_fn, pairs))


def _groups(result: QueryResult) -> list[Group]:
    """Every group cell any member released, in the order first seen ([()] if none)."""
    groups = dict.fromkeys(c.group for r in result.releases.values() for c in r.cells)
    return list(groups) or [()]


def _estimate_row(member: str, group: Group, loss: float | None,
                  compute: Callable[[], Estimate]) -> dict[str, Any]:
    try:
        return _row(member, group, compute(), loss, "ok")
    except PoolingError as exc:
        return _row(member, group, None, loss, f"not estimable: {exc}")


def _row(member: str, group: Group, est: Estimate | None, loss: float | None,
         status: str) -> dict[str, Any]:
    row: dict[str, Any] = {"member": member, **dict(group)}
    fields = ("estimate", "se", "ci_low", "ci_high", "n", "sd", "se_sampling", "se_dp")
    values = vars(est) if est is not None else {}  # flat and read only: no asdict copies
    row.update({f: values.get(f) for f in fields})
    row["loss"] = loss
    row["status"] = status
    if values.get("flag"):
        row["flag"] = values["flag"]  # only d_z estimates carry one
    return row


def _failures_only(result: QueryResult) -> pd.DataFrame:
    return pd.DataFrame([_row(m, (), None, None, f"{f.code}: {f.message}")
                         for m, f in result.failures.items()])
