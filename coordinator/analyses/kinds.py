"""Every analysis kind, each defined once: parameters, queries, tables, meta-analysis.

Adding a statistic is one class here, decorated with `@register`: its `Params` (pydantic,
the study-file fields and the API keyword arguments at once), `queries` (what the nodes are
asked; the cost per member is derived from them) and `output` (tables and plots from the
answers, with the builders of `tables`). The `Network` methods, the study-file model, the
study runner and `study plan`'s cost all read the registry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

import pandas as pd
from pydantic import AliasChoices, Field, ValidationInfo, field_validator, model_validator

from bridgestat.coordinator.analyses.base import NO_GUESS, ColumnFacts, Guess, Kind, Output
from bridgestat.coordinator.analyses.fields import (
    Candidates,
    Categories,
    Clip,
    Flag,
    Frozen,
    Groups,
    Improvement,
    MeanSplitField,
    Name,
    Names,
    Numbers,
    OccasionField,
    OptionalCategories,
    OptionalImprovement,
    OptionalOccasion,
    OptionalPositive,
    Positive,
    Replicates,
    Share,
    Terms,
    WhereField,
    Whole,
)
from bridgestat.coordinator.client.query import INTAKE, Query
from bridgestat.coordinator.secure import aggregation as secure
from bridgestat.coordinator.secure.aggregation import SecureResult
from bridgestat.coordinator.statistics import planning, tables
from bridgestat.coordinator.statistics.regression import RegressionResult
from bridgestat.coordinator.statistics.tables import NETWORK, QueryResult

REGISTRY: dict[str, Kind] = {}
K = TypeVar("K", bound=type[Kind])
ARMS = ("mobility_mentoring", "comparison")
# public bin edges of a numeric column; study files may also write `bins`
def _edges() -> Any:
    return Field(default=(), validation_alias=AliasChoices("bin_edges", "bins"))




def _mean_item(name: str, sizes: tuple[float, ...], bounds: tuple[float, float],
               guess: Guess, clip_counts: bool = False) -> planning.PlanItem:
    """A mean (or a paired change: bounds [-D, D]) pooled from members' sums."""
    return planning.PlanItem(name, planning.Kind.MEAN, sizes, bounds[0], bounds[1],
                             mean=guess.mean, sd=guess.sd, clip_counts=clip_counts)


def _mean_query(p: Any, statistic: str) -> Query:
    """The mean's (or change's) query with its own split and clip counts (issue 15)."""
    return Query(statistic, p.table, p.column, p.epsilon, p.where, group_by=p.group_by,
                 occasion=p.occasion, baseline=getattr(p, "baseline", None), clip=p.clip,
                 split=p.split, clip_counts=p.clip_counts)


def _plain_release(p: Any) -> Any:
    """Secure aggregation releases the three sums only: no split, no clip counts."""
    if p.secure and (p.clip_counts or p.split is not None):
        raise ValueError("secure mode takes neither split nor clip_counts")
    return p


def _cells(column: ColumnFacts, edges: Sequence[float]) -> int:
    """The histogram's cells other than the missing one: categories, or bins of the edges."""
    return column.categories if column.categories else len(edges) + 1


def register(cls: K) -> K:
    """Add a kind to the registry (one instance per kind)."""
    REGISTRY[cls.name] = cls()
    return cls


# -- parameters shared by several kinds --------------------------------------------------------


class Scope(Frozen):
    """Which participants and which row of theirs: table, filters, occasion, loss."""

    table: Name
    column: Name
    epsilon: Positive = 0.5
    where: WhereField = ()
    occasion: OptionalOccasion = None


class Grouped(Scope):
    group_by: Names = ()


class Paired(Frozen):
    """A change between two occasions of the same participants."""

    table: Name
    column: Name
    occasion: OccasionField
    baseline: OccasionField = INTAKE
    epsilon: Positive = 0.5
    where: WhereField = ()


class Arms(Frozen):
    group: Name = "arm"
    groups: Groups = ARMS


# -- each participant beside the network ------------------------------------------------------


class CountParams(Frozen):
    table: Name = "participant"
    epsilon: Positive = 0.5
    where: WhereField = ()
    group_by: Names = ()
    occasion: OptionalOccasion = None
    secure: bool = False  # secure aggregation: the NETWORK row only, one release's noise


def _secure_output(name: str, title: str, results: Sequence[Any],
                   table: Callable[[SecureResult], pd.DataFrame]) -> Output:
    """A secure run's output: the NETWORK-only table, with who took part and dropped out."""
    result: SecureResult = results[0]
    out = Output(results=[], notes=[f"{title or name}: {result.note()}"])
    out.table(name, f"{title} (secure aggregation, NETWORK only)" if title else name,
              table(result))
    return out


def _member_vs_network(out: Output, name: str, title: str, frame: pd.DataFrame,
                       group_by: Sequence[str]) -> Output:
    index = out.table(name, title, frame)
    out.member_plot(index, title, group_by[0] if group_by else None)
    return out


@register
class Count(Kind):
    name = "count"
    title = "Count"
    description = "Number of participants (noisy), per member and group cell."
    Params = CountParams
    positional = ("table",)
    column_kind = "none"

    def queries(self, p: CountParams) -> list[Query | tuple[Query, str]]:
        return [Query("count", p.table, "", p.epsilon, p.where, group_by=p.group_by,
                      occasion=p.occasion)]

    def output(self, p: CountParams, results: Sequence[QueryResult], title: str) -> Output:
        if p.secure:
            return _secure_output("count", title, results, secure.count_table)
        return _member_vs_network(Output(results=list(results)), "count", title,
                                  tables.count_table(results[0]), p.group_by)


class MeanParams(Grouped):
    clip: Clip = None
    secure: bool = False  # secure aggregation: the NETWORK row only, one release's noise
    split: MeanSplitField = None  # loss shares (count, sum, sum_squares); None: 0.2/0.5/0.3
    clip_counts: Flag = False  # also the noisy numbers the clip cuts, at 5 % of the loss

    check_plain_release = model_validator(mode="after")(_plain_release)


@register
class Mean(Kind):
    name = "mean"
    title = "Mean"
    description = ("Mean of a numeric column with sampling and DP error; `clip` sets tighter "
                   "public bounds (less noise).")
    Params = MeanParams
    positional = ("table", "column")
    column_kind = "numeric"
    meta_analysable = True

    def queries(self, p: MeanParams) -> list[Query | tuple[Query, str]]:
        return [_mean_query(p, "mean")]

    def output(self, p: MeanParams, results: Sequence[QueryResult], title: str) -> Output:
        if p.secure:
            return _secure_output("mean", title, results, secure.mean_table)
        return _member_vs_network(Output(results=list(results)), "mean", title,
                                  tables.with_clip_counts(tables.mean_table(results[0]),
                                                          results[0]), p.group_by)

    def plan_item(self, p: MeanParams, name: str, sizes: tuple[float, ...],
                  column: ColumnFacts | None, guess: Guess = NO_GUESS
                  ) -> planning.PlanItem | None:
        if p.group_by or p.secure or column is None:
            return None
        return _mean_item(name, sizes, p.clip or (column.lower, column.upper), guess,
                          p.clip_counts)


class HistogramParams(Grouped):
    bin_edges: Numbers = _edges()
    secure: bool = False  # secure aggregation: the NETWORK rows only, one release's noise


def _histogram(p: HistogramParams) -> Query:
    return Query("histogram", p.table, p.column, p.epsilon, p.where, group_by=p.group_by,
                 occasion=p.occasion, bin_edges=p.bin_edges)


@register
class Histogram(Kind):
    name = "histogram"
    title = "Histogram"
    description = ("Shares of every category (numeric columns: public bin edges), long form, "
                   "one epsilon for all cells.")
    Params = HistogramParams
    positional = ("table", "column")

    def queries(self, p: HistogramParams) -> list[Query | tuple[Query, str]]:
        return [_histogram(p)]

    def output(self, p: HistogramParams, results: Sequence[QueryResult], title: str) -> Output:
        if p.secure:
            return _secure_output("shares", title, results, secure.histogram_table)
        out = Output(results=list(results))
        index = out.table("shares", title, tables.histogram_table(results[0]))
        out.plots.append({"kind": "shares", "table": index, "category": "category"})
        return out


class ProportionParams(Grouped):
    categories: Categories
    bin_edges: Numbers = _edges()
    secure: bool = False  # secure aggregation: the NETWORK row only, one release's noise


@register
class Proportion(Kind):
    name = "proportion"
    title = "Proportion"
    description = "Share of participants (with a known value) whose value is in `categories`."
    Params = ProportionParams
    positional = ("table", "column", "categories")
    meta_analysable = True

    def queries(self, p: ProportionParams) -> list[Query | tuple[Query, str]]:
        return [Query("histogram", p.table, p.column, p.epsilon, p.where, group_by=p.group_by,
                      occasion=p.occasion, bin_edges=p.bin_edges)]

    def output(self, p: ProportionParams, results: Sequence[QueryResult], title: str
               ) -> Output:
        if p.secure:
            return _secure_output("proportion", title, results,
                                  lambda r: secure.proportion_table(r, p.categories))
        frame = tables.proportion_table(results[0], p.categories)
        return _member_vs_network(Output(results=list(results)), "proportion", title, frame,
                                  p.group_by)

    def plan_item(self, p: ProportionParams, name: str, sizes: tuple[float, ...],
                  column: ColumnFacts | None, guess: Guess = NO_GUESS
                  ) -> planning.PlanItem | None:
        if p.group_by or p.secure or column is None:
            return None
        cells = _cells(column, p.bin_edges)
        return planning.PlanItem(name, planning.Kind.PROPORTION, sizes,
                                 share=guess.share or 0.5, cells_in=len(p.categories),
                                 cells_out=max(cells - len(p.categories), 1))


# -- change between occasions -----------------------------------------------------------------


class PairedChangeParams(Paired):
    group_by: Names = ()
    clip: Clip = None
    improvement: OptionalImprovement = None  # also the share improved (one more query)
    share_epsilon: OptionalPositive = Field(default=None, validate_default=True)
    secure: bool = False  # secure aggregation: the NETWORK row only, one release's noise
    split: MeanSplitField = None  # loss shares (count, sum, sum_squares); None: 0.2/0.5/0.3
    clip_counts: Flag = False  # also the noisy numbers the clip cuts, at 5 % of the loss
    reference_sd: OptionalPositive = None  # the d_z flag's SD (None: half-width / 3)

    # set: also the intake values with / without the follow-up occasion (one more query)
    attrition_epsilon: OptionalPositive = None

    @field_validator("attrition_epsilon")
    @classmethod
    def _attrition_alone(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and (info.data.get("group_by") or info.data.get("secure")):
            raise ValueError("attrition is reported for the whole analysis only: not with "
                             "group_by or secure (run one analysis per group with where:)")
        return value

    check_plain_release = model_validator(mode="after")(_plain_release)

    @field_validator("secure")
    @classmethod
    def _secure_without_share(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("improvement") is not None:
            raise ValueError("secure mode takes the mean change only; run the share improved "
                             "(improvement) as its own analysis")
        return value

    @field_validator("share_epsilon")
    @classmethod
    def _share_needs_improvement(cls, value: float | None, info: ValidationInfo
                                 ) -> float | None:
        if "improvement" not in info.data:  # itself refused
            return value
        improving = info.data["improvement"] is not None
        if improving and value is None:
            raise ValueError("the share improved (improvement) needs its own loss here")
        if value is not None and not improving:
            raise ValueError("only with improvement")
        return value


def _share_query(p: Any, epsilon: float) -> Query:
    return Query("histogram", p.table, p.column, epsilon, p.where, group_by=p.group_by,
                 occasion=p.occasion, baseline=p.baseline)


def _attrition_query(p: Any) -> tuple[Query, str]:
    """The column's mean at the baseline occasion, split by whether each participant has a
    value at the follow-up occasion (the paired analysis's completers). The schema's bounds:
    a change's clip does not apply to the values themselves. Both cells for one loss."""
    return (Query("mean", p.table, p.column, p.attrition_epsilon, p.where, occasion=p.baseline,
                  split_by_presence=p.occasion), "attrition_epsilon")


def _attrition_output(out: Output, p: Any, result: QueryResult) -> None:
    """The attrition table and its plot (present, absent and their difference)."""
    index = out.table("attrition", f"{p.column} at baseline: with and without the follow-up "
                      "occasion (present minus absent)", tables.attrition_table(result))
    out.member_plot(index, "At baseline", "cell", sharex=False)


@register
class PairedChange(Kind):
    name = "paired_change"
    title = "Paired change"
    description = ("Mean change between two occasions with CI, Cohen's d_z and its SE; "
                   "`improvement` adds the share improved.")
    Params = PairedChangeParams
    positional = ("table", "column")
    column_kind = "numeric"
    meta_analysable = True

    def queries(self, p: PairedChangeParams) -> list[Query | tuple[Query, str]]:
        change: list[Query | tuple[Query, str]] = [_mean_query(p, "paired_change")]
        if p.improvement:
            if p.share_epsilon is None:
                raise ValueError("share_epsilon: the share improved needs its own loss")
            change.append((_share_query(p, p.share_epsilon), "share_epsilon"))
        if p.attrition_epsilon is not None:
            change.append(_attrition_query(p))
        return change

    def output(self, p: PairedChangeParams, results: Sequence[QueryResult], title: str
               ) -> Output:
        if p.secure:
            return _secure_output("change", title, results, secure.paired_change_table)
        out = Output(results=list(results))
        frame = tables.paired_change_table(results[0], p.reference_sd)
        index = out.table("change", f"Mean change with Cohen's d_z: {title}",
                          tables.with_clip_counts(frame, results[0]))
        out.member_plot(index, "Mean change")
        if p.improvement:
            index = out.table("share_improved", f"Share improved ({p.improvement})",
                              tables.share_improved_table(results[1], p.improvement))
            out.member_plot(index, "Share improved")
        if p.attrition_epsilon is not None:
            _attrition_output(out, p, results[-1])
        return out

    def plan_item(self, p: PairedChangeParams, name: str, sizes: tuple[float, ...],
                  column: ColumnFacts | None, guess: Guess = NO_GUESS
                  ) -> planning.PlanItem | None:
        """The mean change (the node's default clip of a change is [-(U - L), U - L])."""
        if p.group_by or p.secure or column is None:
            return None
        width = column.upper - column.lower
        return _mean_item(name, sizes, p.clip or (-width, width), guess, p.clip_counts)


class ShareImprovedParams(Paired):
    improvement: Improvement = "increase"
    group_by: Names = ()


@register
class ShareImproved(Kind):
    name = "share_improved"
    title = "Share improved"
    description = ("Share of participants whose value moved in the `improvement` direction "
                   "(increase, or decrease e.g. debt) between the occasions.")
    Params = ShareImprovedParams
    positional = ("table", "column")
    column_kind = "numeric"
    meta_analysable = True

    def queries(self, p: ShareImprovedParams) -> list[Query | tuple[Query, str]]:
        return [_share_query(p, p.epsilon)]

    def output(self, p: ShareImprovedParams, results: Sequence[QueryResult], title: str
               ) -> Output:
        frame = tables.share_improved_table(results[0], p.improvement)
        return _member_vs_network(Output(results=list(results)), "share_improved",
                                  title or f"Share improved ({p.improvement})", frame,
                                  p.group_by)

    def plan_item(self, p: ShareImprovedParams, name: str, sizes: tuple[float, ...],
                  column: ColumnFacts | None, guess: Guess = NO_GUESS
                  ) -> planning.PlanItem | None:
        """One of the three cells decreased / unchanged / increased against the other two."""
        if p.group_by:
            return None
        return planning.PlanItem(name, planning.Kind.PROPORTION, sizes,
                                 share=guess.share or 0.5, cells_in=1, cells_out=2)


class FollowUpParams(Paired):
    # set: also the intake values with / without the follow-up occasion (one more query)
    attrition_epsilon: OptionalPositive = None


@register
class FollowUp(Kind):
    name = "follow_up"
    title = "Follow-up"
    description = ("Share of intake participants that have the follow-up occasion; "
                   "`attrition_epsilon` adds whether they differed at intake.")
    Params = FollowUpParams
    positional = ("table", "column")
    column_kind = "numeric"

    def queries(self, p: FollowUpParams) -> list[Query | tuple[Query, str]]:
        asked: list[Query | tuple[Query, str]] = [
            Query("histogram", p.table, p.column, p.epsilon, p.where, occasion=p.occasion,
                  baseline=p.baseline)]
        if p.attrition_epsilon is not None:
            asked.append(_attrition_query(p))
        return asked

    def output(self, p: FollowUpParams, results: Sequence[QueryResult], title: str) -> Output:
        out = Output(results=list(results))
        index = out.table("followed_up", title, tables.followed_up_table(results[0]))
        out.member_plot(index, "Share with a follow-up")
        if p.attrition_epsilon is not None:
            _attrition_output(out, p, results[-1])
        return out


class TransitionParams(Paired):
    categories: OptionalCategories = None  # set: the paired risk difference of this share


@register
class Transition(Kind):
    name = "transition"
    title = "Transitions"
    description = ("'before -> after' table of a categorical column; with `categories` the "
                   "paired difference of their share.")
    Params = TransitionParams
    positional = ("table", "column")
    column_kind = "categorical"

    def queries(self, p: TransitionParams) -> list[Query | tuple[Query, str]]:
        return [Query("histogram", p.table, p.column, p.epsilon, p.where, occasion=p.occasion,
                      baseline=p.baseline)]

    def output(self, p: TransitionParams, results: Sequence[QueryResult], title: str
               ) -> Output:
        out = Output(results=list(results))
        index = out.table("transitions", title, tables.transition_table(results[0]))
        out.plots.append({"kind": "transition", "table": index})
        if p.categories:
            diff = tables.paired_difference_table(results[0], p.categories)
            index = out.table("paired_difference",
                              f"Share in {', '.join(p.categories)}: follow-up minus baseline "
                              "(same participants)", diff)
            out.member_plot(index, "Change in share")
        return out

    def value(self, p: TransitionParams, results: Sequence[QueryResult]) -> QueryResult:
        """The raw transition histogram: `tables.transition_table` and
        `tables.paired_difference_table` turn it into tables."""
        return results[0]


# -- the comparison arm -----------------------------------------------------------------------


class CompareParams(Scope, Arms):
    categories: Categories
    bin_edges: Numbers = _edges()


@register
class Compare(Kind):
    name = "compare"
    title = "Comparison of two groups"
    description = ("Share in `categories` per group, risk difference, log risk ratio and log "
                   "odds ratio of groups[0] against groups[1].")
    Params = CompareParams
    positional = ("table", "column", "categories")
    meta_analysable = True

    def queries(self, p: CompareParams) -> list[Query | tuple[Query, str]]:
        return [Query("histogram", p.table, p.column, p.epsilon, p.where, group_by=(p.group,),
                      occasion=p.occasion, bin_edges=p.bin_edges)]

    def output(self, p: CompareParams, results: Sequence[QueryResult], title: str) -> Output:
        out = Output(results=list(results))
        frame = tables.compare_table(results[0], p.categories, p.group, p.groups)
        index = out.table("comparison", f"{p.groups[0]} vs {p.groups[1]}: {title}", frame)
        out.member_plot(index, title, "measure", sharex=False)
        return out

    def plan_item(self, p: CompareParams, name: str, sizes: tuple[float, ...],
                  column: ColumnFacts | None, guess: Guess = NO_GUESS
                  ) -> planning.PlanItem | None:
        """The risk difference, each member's participants split equally between the two
        groups (a planning assumption: declare the group's own sizes to plan otherwise)."""
        if column is None:
            return None
        cells = _cells(column, p.bin_edges)
        half = tuple(n / 2 for n in sizes)
        return planning.PlanItem(name, planning.Kind.RISK_DIFFERENCE, half,
                                 share=guess.share or 0.5,
                                 share_other=guess.share_other or guess.share or 0.5,
                                 sizes_other=half, cells_in=len(p.categories),
                                 cells_out=max(cells - len(p.categories), 1))

    def meta_frames(self, p: CompareParams, output: Output, title: str
                    ) -> list[tuple[str, pd.DataFrame]]:
        frame = output.tables[0][2]
        return [("risk difference", frame[frame.measure == "risk_difference"])]


class DidParams(Paired, Arms):
    clip: Clip = None


@register
class Did(Kind):
    name = "did"
    title = "Difference-in-differences"
    description = ("Mean change in groups[0] minus in groups[1], per member with both arms; "
                   "NETWORK pools the within-member contrasts.")
    Params = DidParams
    positional = ("table", "column")
    column_kind = "numeric"
    meta_analysable = True

    def queries(self, p: DidParams) -> list[Query | tuple[Query, str]]:
        return [Query("paired_change", p.table, p.column, p.epsilon, p.where,
                      group_by=(p.group,), occasion=p.occasion, baseline=p.baseline,
                      clip=p.clip)]

    def output(self, p: DidParams, results: Sequence[QueryResult], title: str) -> Output:
        out = Output(results=list(results))
        frame = tables.did_table(results[0], p.group, p.groups)
        index = out.table("did", f"Difference-in-differences ({p.groups[0]} minus "
                          f"{p.groups[1]}): {title}", frame)
        out.member_plot(index, "Difference in mean change")
        out.notes.append("NETWORK pools the members that have both arms (fixed effect, "
                         "inverse variance); members without a comparison arm are named.")
        return out


# -- models -----------------------------------------------------------------------------------


class RegressionParams(Frozen):
    terms: Terms
    table: Name = "assessment"
    rho: Positive = 0.05
    where: WhereField = ()
    occasion: OptionalOccasion = None
    replicates: Replicates = 2000
    seed: Whole = 0
    secure: bool = False  # secure aggregation: the NETWORK fit only, one release's noise


@register
class Regression(Kind):
    name = "regression"
    title = "Linear regression"
    description = ("OLS of the last term on the others from DP cross products, per member and "
                   "pooled, with parametric-bootstrap SEs; loss in rho.")
    Params = RegressionParams
    positional = ("terms",)
    column_kind = "none"
    hints: ClassVar[dict[str, str]] = {
        "epsilon": "a regression spends rho (zCDP), not epsilon"}

    def queries(self, p: RegressionParams) -> list[Query | tuple[Query, str]]:
        return [Query("cross_products", p.table, "", 0.0, p.where, occasion=p.occasion,
                      rho=p.rho, terms=tuple(t.term() for t in p.terms))]

    def fits(self, p: RegressionParams, results: Sequence[Any]
             ) -> dict[str, RegressionResult | str]:
        if p.secure:
            names = tables.term_names(results[0].query.terms)
            return secure.regression_fits(results[0], names, replicates=p.replicates,
                                          seed=p.seed)
        return tables.regression_fits(results[0], replicates=p.replicates, seed=p.seed)

    def output(self, p: RegressionParams, results: Sequence[Any], title: str
               ) -> Output:
        out = Output(results=[] if p.secure else list(results))
        fits = self.fits(p, results)
        frame = tables.regression_table(fits)
        if p.secure:
            frame = secure.secure_regression_table(frame, results[0])
            out.notes.append(f"{title or self.name}: {results[0].note()}")
            title = f"{title} (secure aggregation, NETWORK only)" if title else title
        index = out.table("coefficients", title, frame)
        out.plots.append({"kind": "coefficients", "regression": NETWORK, "table": index})
        out.regression = {m: (f.to_dict() if isinstance(f, RegressionResult)
                              else {"status": f}) for m, f in fits.items()}
        out.notes.append("Standard errors from a parametric bootstrap with fresh noise at the "
                         "public scales; se_ols, which ignores the DP noise, is shown for "
                         "contrast.")
        return out

    def value(self, p: RegressionParams, results: Sequence[Any]
              ) -> dict[str, RegressionResult | str]:
        """Every member's fit and NETWORK's; a member that failed maps to its reason."""
        return self.fits(p, results)


class QuantileParams(Frozen):
    table: Name
    column: Name
    q: Share
    candidates: Candidates
    epsilon: Positive = 0.5
    where: WhereField = ()
    occasion: OptionalOccasion = None


@register
class Quantile(Kind):
    name = "quantile"
    title = "Quantile"
    description = ("Member quantiles (exponential mechanism over public candidates) and a "
                   "NETWORK quantile with a CI from the pooled histogram; half the loss each.")
    Params = QuantileParams
    positional = ("table", "column", "q", "candidates")
    column_kind = "numeric"

    def queries(self, p: QuantileParams) -> list[Query | tuple[Query, str]]:
        return [Query("quantile", p.table, p.column, p.epsilon / 2, p.where,
                      occasion=p.occasion, quantile=p.q, bin_edges=p.candidates),
                Query("histogram", p.table, p.column, p.epsilon / 2, p.where,
                      occasion=p.occasion, bin_edges=p.candidates[1:-1])]

    def output(self, p: QuantileParams, results: Sequence[QueryResult], title: str) -> Output:
        out = Output(results=list(results))
        frame = tables.quantile_table(results[0], results[1], p.q, p.candidates)
        index = out.table("quantile", title, frame)
        out.member_plot(index, f"Quantile {p.q:g}")
        out.notes.append("Member values come from OpenDP's exponential mechanism (no "
                         "closed-form SE); the NETWORK value and CI from the pooled histogram.")
        return out
