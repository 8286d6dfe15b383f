"""The one encoding of a query between its shared value (`bridgestat.common.query.Query`) and
protobuf (`bridgestat.v1.Query`): the coordinator encodes, the node decodes and echoes.

    msg = query_to_pb(Query("mean", "assessment", "bridge_total", 0.5))
    assert query_from_pb(msg) == Query("mean", "assessment", "bridge_total", 0.5)

Decoding refuses only what has no shared value (an unknown statistic number, a filter of no
kind) with a WireError naming the field; whether a query fits a schema is the node's call.
"""

from __future__ import annotations

from bridgestat.common.query import STATISTICS, Occasion, Query, Statistic, Term
from bridgestat.v1 import node_service_pb2 as pb

_TO_PB = {Statistic.UNSPECIFIED: pb.STATISTIC_UNSPECIFIED,
          Statistic.COUNT: pb.STATISTIC_COUNT, Statistic.MEAN: pb.STATISTIC_MEAN,
          Statistic.HISTOGRAM: pb.STATISTIC_HISTOGRAM,
          Statistic.PAIRED_CHANGE: pb.STATISTIC_PAIRED_CHANGE,
          Statistic.QUANTILE: pb.STATISTIC_QUANTILE,
          Statistic.CROSS_PRODUCTS: pb.STATISTIC_CROSS_PRODUCTS}
_FROM_PB = {number: statistic.value for statistic, number in _TO_PB.items()}


class WireError(ValueError):
    """A query that cannot be encoded or decoded; names the field (`query.statistic`)."""

    def __init__(self, field: str, problem: str) -> None:
        self.field, self.problem = field, problem
        super().__init__(f"{field}: {problem}")


def query_to_pb(query: Query) -> pb.Query:
    """The wire form of `query`; WireError for a statistic that is not one of STATISTICS."""
    if query.statistic not in STATISTICS:
        raise WireError("query.statistic", f"must be one of {', '.join(STATISTICS)}, got "
                        f"{query.statistic!r}")
    msg = pb.Query(statistic=_TO_PB[Statistic(query.statistic)], table=query.table,
                   column=query.column, group_by=query.group_by,
                   loss=pb.PrivacyLoss(epsilon=query.epsilon, rho=query.rho),
                   bin_edges=query.bin_edges, quantile=query.quantile,
                   clip_counts=query.clip_counts)
    if query.split is not None:
        count, total, squares = query.split
        msg.split.CopyFrom(pb.MeanSplit(count=count, sum=total, sum_squares=squares))
    for term in query.terms:
        added = msg.terms.add(column=term.column, category=term.category)
        _set_occasions(added, term.occasion, term.baseline)
        if term.clip is not None:
            added.clip.CopyFrom(_bounds(term.clip))
    for column, values in query.where:
        msg.filters.add(category=pb.CategoryFilter(column=column, values=values))
    for column, lower, upper in query.ranges:
        msg.filters.add(range=pb.RangeFilter(column=column, lower=lower, upper=upper))
    if query.clip is not None:
        msg.clip.CopyFrom(_bounds(query.clip))
    _set_occasions(msg, query.occasion, query.baseline)
    if query.split_by_presence is not None:
        msg.split_by_presence.CopyFrom(_occasion_pb(query.split_by_presence))
    return msg


def query_from_pb(msg: pb.Query) -> Query:
    """The shared value of a wire query (an unset statistic decodes as "unspecified", for the
    node to refuse with the others); WireError naming the field for what has none."""
    if msg.statistic not in _FROM_PB:
        raise WireError("query.statistic", f"unknown statistic {msg.statistic}")
    where: list[tuple[str, tuple[str, ...]]] = []
    ranges: list[tuple[str, float | None, float | None]] = []
    for index, flt in enumerate(msg.filters):
        kind = flt.WhichOneof("kind")
        if kind == "category":
            where.append((flt.category.column, tuple(flt.category.values)))
        elif kind == "range":
            rng = flt.range
            ranges.append((rng.column, rng.lower if rng.HasField("lower") else None,
                           rng.upper if rng.HasField("upper") else None))
        else:
            raise WireError(f"query.filters[{index}]", "must be a category or a range filter")
    return Query(statistic=_FROM_PB[msg.statistic], table=msg.table, column=msg.column,
                 epsilon=msg.loss.epsilon, where=tuple(where), ranges=tuple(ranges),
                 group_by=tuple(msg.group_by), occasion=_occasion(msg, "occasion"),
                 baseline=_occasion(msg, "baseline"), bin_edges=tuple(msg.bin_edges),
                 clip=_clip(msg), rho=msg.loss.rho, quantile=msg.quantile,
                 terms=tuple(_term(t) for t in msg.terms), split=_split(msg),
                 clip_counts=msg.clip_counts,
                 split_by_presence=_occasion(msg, "split_by_presence"))


def _split(msg: pb.Query) -> tuple[float, float, float] | None:
    if not msg.HasField("split"):
        return None
    return (msg.split.count, msg.split.sum, msg.split.sum_squares)


def _term(msg: pb.Term) -> Term:
    return Term(column=msg.column, occasion=_occasion(msg, "occasion"),
                baseline=_occasion(msg, "baseline"), category=msg.category, clip=_clip(msg))


def _occasion(msg: pb.Query | pb.Term, name: str) -> Occasion | None:
    if not msg.HasField(name):
        return None
    occ: pb.Occasion = getattr(msg, name)
    return Occasion(occ.target_month, occ.window_lower, occ.window_upper)


def _clip(msg: pb.Query | pb.Term) -> tuple[float, float] | None:
    return (msg.clip.lower, msg.clip.upper) if msg.HasField("clip") else None


def _bounds(clip: tuple[float, float]) -> pb.Bounds:
    return pb.Bounds(lower=clip[0], upper=clip[1])


def _set_occasions(msg: pb.Query | pb.Term, occasion: Occasion | None,
                   baseline: Occasion | None) -> None:
    for name, occ in (("occasion", occasion), ("baseline", baseline)):
        if occ is not None:
            getattr(msg, name).CopyFrom(_occasion_pb(occ))


def _occasion_pb(occ: Occasion) -> pb.Occasion:
    return pb.Occasion(target_month=occ.target_month, window_lower=occ.window_lower,
                       window_upper=occ.window_upper)
