"""The member's policy file: parsing (every bad key or value named), the rules the planner
enforces (refusals name field and rule), and the ledger's per-period cap."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from fractions import Fraction
from pathlib import Path

import pytest
import yaml

from bridgestat.node.config import NodeConfig, load_config
from bridgestat.node.errors import BudgetExhausted, ConfigError, PolicyError, QueryError
from bridgestat.node.ledger import Ledger, PeriodCap, period_label
from bridgestat.node.loss import Epsilon, Loss
from bridgestat.node.planner import compile_query
from bridgestat.node.policy import Policy, load_policy
from bridgestat.node.query import CategoryFilter, Occasion, QuerySpec, Statistic, Term

CONFIG = {"node_id": "member-01", "data": {"source": "csv", "path": "."}, "schema": "default",
          "categories": {"participant.team": ["team_1", "team_2"]},
          "budget": {"dataset": "ds", "total_epsilon": 10.0, "max_epsilon_per_query": 1.0},
          "ledger": "ledger.sqlite", "policy": "policy.yaml"}
GOOD = """
budget: {total_epsilon: 8, per_period: {period: year, epsilon: 4}, max_epsilon_per_query: 0.5}
statistics: [count, mean, histogram, paired_change, cross_products]
group_by: [arm, gender, household_type]
filter: [arm, gender, age_band]
comparison: false
min_group_size: 10
"""


def _config(tmp_path: Path, policy: str) -> NodeConfig:
    (tmp_path / "policy.yaml").write_text(policy)
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return load_config(path)


def _load(tmp_path: Path, policy: str) -> Policy:
    config = _config(tmp_path, policy)
    return load_policy(config, config.schema())


def test_policy_file_is_read_with_every_rule(tmp_path: Path) -> None:
    policy = _load(tmp_path, GOOD)
    assert (policy.total_epsilon, policy.max_epsilon_per_query) == (8.0, 0.5)
    assert policy.per_period == PeriodCap("year", Epsilon.of(4))
    assert policy.statistics is not None and Statistic.QUANTILE not in policy.statistics
    assert policy.group_by == frozenset({"arm", "gender", "household_type"})
    assert policy.filter == frozenset({"arm", "gender", "age_band"})
    assert not policy.comparison and policy.min_group_size == 10
    assert policy.source == str(tmp_path / "policy.yaml")


def test_without_policy_file_the_config_budget_applies_and_all_is_allowed(
        tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump({k: v for k, v in CONFIG.items() if k != "policy"}))
    config = load_config(path)
    policy = load_policy(config, config.schema())
    assert policy == Policy(max_epsilon_per_query=1.0, total_epsilon=10.0)
    assert policy.statistics is None and policy.comparison and policy.min_group_size == 0


def test_missing_budget_keys_default_to_the_config(tmp_path: Path) -> None:
    policy = _load(tmp_path, "budget: {total_epsilon: 0.5}\n")
    assert (policy.total_epsilon, policy.max_epsilon_per_query) == (0.5, 0.5)
    assert _load(tmp_path, "").total_epsilon == 10.0  # an empty file allows everything


BAD = [
    ("unknown key", "colour: red", "colour", "unknown key"),
    ("not a mapping", "- count", "(top level)", "must be a mapping"),
    ("not YAML", "budget: {total_epsilon: [", "(file)", "cannot read policy"),
    ("unknown budget key", "budget: {total: 3}", "budget.total", "unknown key"),
    ("looser total", "budget: {total_epsilon: 20}", "budget.total_epsilon",
     "exceeds the node config's budget.total_epsilon 10"),
    ("negative total", "budget: {total_epsilon: -1}", "budget.total_epsilon", "> 0"),
    ("text total", "budget: {total_epsilon: lots}", "budget.total_epsilon", "> 0"),
    ("looser per query", "budget: {max_epsilon_per_query: 2}",
     "budget.max_epsilon_per_query", "exceeds the node config's"),
    ("per query above total", "budget: {total_epsilon: 0.5, max_epsilon_per_query: 0.8}",
     "budget.max_epsilon_per_query", "exceeds the total 0.5"),
    ("unknown period", "budget: {per_period: {period: decade, epsilon: 2}}",
     "budget.per_period.period", "year, quarter, month"),
    ("unknown period key", "budget: {per_period: {period: year, epsilon: 2, cap: 1}}",
     "budget.per_period.cap", "unknown key"),
    ("period without epsilon", "budget: {per_period: {period: year}}",
     "budget.per_period.epsilon", "required"),
    ("period above total", "budget: {total_epsilon: 3, per_period: {period: year, epsilon: 4}}",
     "budget.per_period.epsilon", "exceeds the total 3"),
    ("period below per query", "budget: {per_period: {period: month, epsilon: 0.5}}",
     "budget.per_period.epsilon", "below the largest loss per query 1"),
    ("statistics not a list", "statistics: count", "statistics", "must be a list"),
    ("unknown statistic", "statistics: [count, median]", "statistics[1]",
     "unknown statistic 'median'"),
    ("no statistic", "statistics: []", "statistics", "at least one"),
    ("unknown group-by column", "group_by: [arm, shoe_size]", "group_by[1]",
     "'shoe_size' is not a column"),
    ("numeric group-by column", "group_by: [bridge_total]", "group_by[0]",
     "not a categorical column"),
    ("key filter column", "filter: [participant_id]", "filter[0]", "not a column"),
    ("filter column twice", "filter: [arm, arm]", "filter", "lists 'arm' twice"),
    ("comparison not a boolean", "comparison: maybe", "comparison", "true or false"),
    ("negative group size", "min_group_size: -3", "min_group_size", ">= 0"),
    ("quantile with group size", "statistics: [quantile]\nmin_group_size: 5", "min_group_size",
     "a quantile releases no noisy count"),
    ("huge integer group size", f"min_group_size: {10**400}", "min_group_size", ">= 0"),
    ("huge integer total", f"budget: {{total_epsilon: {10**400}}}", "budget.total_epsilon",
     "> 0"),
]


@pytest.mark.parametrize(("case", "text", "key", "problem"), BAD, ids=[b[0] for b in BAD])
def test_bad_policy_names_file_and_key(tmp_path: Path, case: str, text: str, key: str,
                                       problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text + "\n")
    assert caught.value.source == str(tmp_path / "policy.yaml"), case
    assert caught.value.key == key, caught.value
    assert problem in caught.value.problem, caught.value


def test_policy_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    config = _config(tmp_path, "")
    (tmp_path / "policy.yaml").write_bytes(b"min_group_size: \xff\xfe\n")
    with pytest.raises(ConfigError) as caught:
        load_policy(config, config.schema())
    assert caught.value.key == "(file)" and "cannot read policy" in caught.value.problem


def test_missing_policy_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "node.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    with pytest.raises(ConfigError, match="policy"):
        load_config(path)


# -- the rules, as the planner enforces them --------------------------------------------------


def _compile(tmp_path: Path, query: QuerySpec, policy_text: str = GOOD) -> None:
    config = _config(tmp_path, policy_text)
    compile_query(query, config.schema(), load_policy(config, config.schema()))


def _count(group_by: tuple[str, ...] = (),
           filters: tuple[CategoryFilter, ...] = ()) -> QuerySpec:
    return QuerySpec(Statistic.COUNT, "participant", "", 0.5, filters, group_by)


REFUSED = [
    ("statistic", QuerySpec(Statistic.QUANTILE, "assessment", "bridge_total", 0.5,
                            bin_edges=(10.0, 20.0), quantile=0.5),
     "query.statistic", "policy rule statistics: a quantile is not allowed"),
    ("group by", _count(group_by=("arm", "team")), "query.group_by[1]",
     ("policy rule group_by: 'team' may not be grouped by (allowed: arm, gender, "
     "household_type)")),
    ("filter", _count(filters=(CategoryFilter("team", ("team_1",)),)),
     "query.filters[0].column", "policy rule filter: 'team' may not be filtered on"),
    ("indicator regressor", QuerySpec(Statistic.CROSS_PRODUCTS, "assessment", "", 0.0, rho=0.001,
                                      terms=(Term("team", category="team_1"),
                                             Term("bridge_total"))),
     "query.terms[0].category", "policy rule group_by: 'team' may not split a regression"),
    ("per-query cap", QuerySpec(Statistic.COUNT, "participant", "", 0.8), "query.loss.epsilon",
     "policy rule budget.max_epsilon_per_query: 0.8 exceeds"),
]


@pytest.mark.parametrize(("case", "query", "field", "problem"), REFUSED,
                         ids=[r[0] for r in REFUSED])
def test_refusal_names_field_and_rule(tmp_path: Path, case: str, query: QuerySpec, field: str,
                                      problem: str) -> None:
    with pytest.raises(PolicyError) as caught:
        _compile(tmp_path, query)
    assert caught.value.field == field, case
    assert caught.value.problem.startswith(problem), caught.value.problem


def test_allowed_query_compiles_and_response_indicator_is_an_outcome(tmp_path: Path) -> None:
    _compile(tmp_path, _count(group_by=("gender",), filters=(
        CategoryFilter("age_band", ("18-22",)),)))
    _compile(tmp_path, QuerySpec(Statistic.CROSS_PRODUCTS, "assessment", "", 0.0, rho=0.001,
                                 terms=(Term("bridge_total"),
                                        Term("work_status", category="paid_full_time"))))


def test_the_attrition_split_is_a_grouping_the_policy_must_allow(tmp_path: Path) -> None:
    split = QuerySpec(Statistic.MEAN, "assessment", "bridge_total", 0.5,
                      occasion=Occasion(0, 0, 2), split_by_presence=Occasion(12, 9, 15))
    with pytest.raises(PolicyError) as caught:
        _compile(tmp_path, split)  # GOOD lists group_by columns but not follow_up_presence
    assert caught.value.field == "query.split_by_presence"
    assert caught.value.problem.startswith("policy rule group_by: 'follow_up_presence' is "
                                           "not allowed"), caught.value.problem
    _compile(tmp_path, split, GOOD.replace("group_by: [arm,", "group_by: [follow_up_presence, arm,"))
    _compile(tmp_path, split, "min_group_size: 10\n")  # no group_by rule: every split allowed


def test_min_group_size_refuses_quantiles_even_when_statistics_allow_all(
        tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as caught:
        _compile(tmp_path, QuerySpec(Statistic.QUANTILE, "assessment", "bridge_total", 0.5,
                                     bin_edges=(10.0, 20.0), quantile=0.5),
                 "min_group_size: 10\n")
    assert caught.value.problem.startswith("policy rule min_group_size")


def test_malformed_query_is_a_query_error_before_the_policy(tmp_path: Path) -> None:
    with pytest.raises(QueryError) as caught:
        _compile(tmp_path, _count(group_by=("shoe_size",)))
    assert caught.value.field == "query.group_by[0]"


# -- the per-period cap in the ledger ---------------------------------------------------------


class Clock:
    """A settable clock for the ledger."""

    def __init__(self, when: datetime) -> None:
        self.when = when

    def __call__(self) -> datetime:
        return self.when


def _ledger(tmp_path: Path, clock: Clock, period: str = "year", cap: float = 1.0,
            total: float = 2.0) -> Ledger:
    return Ledger(tmp_path / "ledger.sqlite", "ds", Epsilon.of(total),
                  period=PeriodCap(period, Epsilon.of(cap)), clock=clock)


def _charge(ledger: Ledger, key: str, epsilon: float) -> None:
    ledger.reserve(key, key, Loss.of(epsilon))
    ledger.commit(key, "{}")


def test_charges_of_the_previous_period_do_not_count(tmp_path: Path) -> None:
    clock = Clock(datetime(2025, 12, 31, 23, 59, tzinfo=UTC))
    ledger = _ledger(tmp_path, clock)
    _charge(ledger, "old", 0.8)
    clock.when = datetime(2026, 1, 1, 0, 0, 1, tzinfo=UTC)
    _charge(ledger, "new", 0.8)  # 1.6 in total, but only 0.8 in 2026
    state = ledger.state()
    assert state.period_name == "2026" and state.period_spent == Epsilon.of(0.8)
    assert state.spent == Epsilon.of(Fraction(0.8) * 2)
    assert state.remaining == Epsilon.of(Fraction(1) - Fraction(0.8))  # the period binds


def test_period_cap_refuses_naming_the_rule_and_spends_nothing(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, Clock(datetime(2026, 5, 1, tzinfo=UTC)))
    _charge(ledger, "a", 0.7)
    with pytest.raises(BudgetExhausted, match="policy rule budget.per_period: the year 2026"):
        ledger.reserve("b", "b", Loss.of(0.4))
    assert ledger.state().spent == Epsilon.of(0.7)
    assert [key for key, _, _ in ledger.charges()] == ["a"]
    _charge(ledger, "c", float(Fraction(1) - Fraction(0.7)))  # exactly the rest


def test_total_still_binds_across_periods(tmp_path: Path) -> None:
    clock = Clock(datetime(2024, 6, 1, tzinfo=UTC))
    ledger = _ledger(tmp_path, clock, total=1.5)
    _charge(ledger, "y2024", 1.0)
    clock.when = datetime(2025, 6, 1, tzinfo=UTC)
    with pytest.raises(BudgetExhausted, match="budget of dataset 'ds' exhausted"):
        ledger.reserve("y2025", "y2025", Loss.of(0.6))


def test_monthly_and_quarterly_periods(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 3, 31, 12, tzinfo=UTC))
    ledger = _ledger(tmp_path, clock, period="month", cap=0.5)
    _charge(ledger, "march", 0.5)
    clock.when = datetime(2026, 4, 1, tzinfo=UTC)
    _charge(ledger, "april", 0.5)
    assert period_label("quarter", clock.when) == "2026-Q2"
    assert period_label("month", clock.when) == "2026-04"


def test_cancelled_reservation_is_refunded_in_the_period(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, Clock(datetime(2026, 5, 1, tzinfo=UTC)))
    ledger.reserve("a", "a", Loss.of(1.0))
    ledger.cancel("a")
    _charge(ledger, "b", 1.0)


def test_concurrent_reservations_never_exceed_the_period_cap(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 5, 1, tzinfo=UTC))
    _ledger(tmp_path, clock)  # creates the tables once
    outcomes: list[bool] = []

    def one(i: int) -> None:
        ledger = _ledger(tmp_path, clock)  # its own connections, like another process
        try:
            ledger.reserve(f"k{i}", f"k{i}", Loss.of(0.3))
            outcomes.append(True)
        except BudgetExhausted:
            outcomes.append(False)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count(True) == 3  # floor(1.0 / 0.3)
    assert _ledger(tmp_path, clock).state().period_spent == Epsilon.of(Fraction(0.3) * 3)


def test_a_cap_added_later_counts_what_was_charged_before(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 5, 1, tzinfo=UTC))
    uncapped = Ledger(tmp_path / "ledger.sqlite", "ds", Epsilon.of(2.0), clock=clock)
    uncapped.reserve("a", "a", Loss.of(0.25))
    uncapped.commit("a", "{}")
    clock.when = datetime(2026, 5, 20, tzinfo=UTC)
    monthly = _ledger(tmp_path, clock, period="month", cap=0.5)
    assert monthly.state().period_spent == Epsilon.of(0.25)
    with pytest.raises(BudgetExhausted, match="the month 2026-05"):
        monthly.reserve("b", "b", Loss.of(0.3))
    quarterly = _ledger(tmp_path, clock, period="quarter", cap=0.5)
    assert quarterly.state().period_name == "2026-Q2"
    assert quarterly.state().period_spent == Epsilon.of(0.25)


def test_a_ledger_without_period_totals_is_summed_from_its_charges_when_opened(
        tmp_path: Path) -> None:
    clock = Clock(datetime(2025, 12, 31, tzinfo=UTC))
    ledger = _ledger(tmp_path, clock)
    _charge(ledger, "old", 0.5)
    clock.when = datetime(2026, 2, 1, tzinfo=UTC)
    _charge(ledger, "a", 0.25)
    _charge(ledger, "b", 0.125)
    with sqlite3.connect(tmp_path / "ledger.sqlite") as db:  # as a ledger from before the table
        db.execute("DELETE FROM period_spent")
    reopened = _ledger(tmp_path, clock)
    assert reopened.state().period_spent == Epsilon.of(0.375)
    assert _ledger(tmp_path, clock, period="month").state().period_spent == Epsilon.of(0.375)
    clock.when = datetime(2025, 12, 1, tzinfo=UTC)
    assert _ledger(tmp_path, clock).state().period_spent == Epsilon.of(0.5)


def test_a_refund_leaves_the_period_total_as_before(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path, Clock(datetime(2026, 5, 1, tzinfo=UTC)), period="quarter")
    _charge(ledger, "a", 0.25)
    ledger.reserve("b", "b", Loss.of(0.5))
    assert ledger.state().period_spent == Epsilon.of(0.75)
    ledger.cancel("b")
    assert ledger.state().period_spent == Epsilon.of(0.25)


def test_both_timestamps_of_a_charge_come_from_the_ledger_clock(tmp_path: Path) -> None:
    clock = Clock(datetime(2026, 5, 1, 9, tzinfo=UTC))
    ledger = _ledger(tmp_path, clock)
    ledger.reserve("a", "a", Loss.of(0.25))
    clock.when = datetime(2026, 5, 1, 9, 0, 2, 500_000, tzinfo=UTC)
    ledger.commit("a", "{}")
    [charge] = ledger.history()
    assert (charge.created_at, charge.committed_at) == ("2026-05-01T09:00:00.000Z",
                                                        "2026-05-01T09:00:02.500Z")
