from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ColumnType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COLUMN_TYPE_UNSPECIFIED: _ClassVar[ColumnType]
    COLUMN_TYPE_KEY: _ClassVar[ColumnType]
    COLUMN_TYPE_INTEGER: _ClassVar[ColumnType]
    COLUMN_TYPE_REAL: _ClassVar[ColumnType]
    COLUMN_TYPE_BOOLEAN: _ClassVar[ColumnType]
    COLUMN_TYPE_CATEGORICAL: _ClassVar[ColumnType]

class Statistic(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STATISTIC_UNSPECIFIED: _ClassVar[Statistic]
    STATISTIC_COUNT: _ClassVar[Statistic]
    STATISTIC_MEAN: _ClassVar[Statistic]
    STATISTIC_HISTOGRAM: _ClassVar[Statistic]
    STATISTIC_PAIRED_CHANGE: _ClassVar[Statistic]
    STATISTIC_QUANTILE: _ClassVar[Statistic]
    STATISTIC_CROSS_PRODUCTS: _ClassVar[Statistic]
COLUMN_TYPE_UNSPECIFIED: ColumnType
COLUMN_TYPE_KEY: ColumnType
COLUMN_TYPE_INTEGER: ColumnType
COLUMN_TYPE_REAL: ColumnType
COLUMN_TYPE_BOOLEAN: ColumnType
COLUMN_TYPE_CATEGORICAL: ColumnType
STATISTIC_UNSPECIFIED: Statistic
STATISTIC_COUNT: Statistic
STATISTIC_MEAN: Statistic
STATISTIC_HISTOGRAM: Statistic
STATISTIC_PAIRED_CHANGE: Statistic
STATISTIC_QUANTILE: Statistic
STATISTIC_CROSS_PRODUCTS: Statistic

class Column(_message.Message):
    __slots__ = ("name", "type", "lower", "upper", "categories", "description", "derived")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DERIVED_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: ColumnType
    lower: float
    upper: float
    categories: _containers.RepeatedScalarFieldContainer[str]
    description: str
    derived: bool
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[ColumnType, str]] = ..., lower: _Optional[float] = ..., upper: _Optional[float] = ..., categories: _Optional[_Iterable[str]] = ..., description: _Optional[str] = ..., derived: _Optional[bool] = ...) -> None: ...

class Table(_message.Message):
    __slots__ = ("name", "columns", "max_rows_per_participant", "has_occasions", "month_column")
    NAME_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_PER_PARTICIPANT_FIELD_NUMBER: _ClassVar[int]
    HAS_OCCASIONS_FIELD_NUMBER: _ClassVar[int]
    MONTH_COLUMN_FIELD_NUMBER: _ClassVar[int]
    name: str
    columns: _containers.RepeatedCompositeFieldContainer[Column]
    max_rows_per_participant: int
    has_occasions: bool
    month_column: str
    def __init__(self, name: _Optional[str] = ..., columns: _Optional[_Iterable[_Union[Column, _Mapping]]] = ..., max_rows_per_participant: _Optional[int] = ..., has_occasions: _Optional[bool] = ..., month_column: _Optional[str] = ...) -> None: ...

class Schema(_message.Message):
    __slots__ = ("name", "version", "tables")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TABLES_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    tables: _containers.RepeatedCompositeFieldContainer[Table]
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., tables: _Optional[_Iterable[_Union[Table, _Mapping]]] = ...) -> None: ...

class PrivacyLoss(_message.Message):
    __slots__ = ("epsilon", "rho", "delta")
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    RHO_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    epsilon: float
    rho: float
    delta: float
    def __init__(self, epsilon: _Optional[float] = ..., rho: _Optional[float] = ..., delta: _Optional[float] = ...) -> None: ...

class Budget(_message.Message):
    __slots__ = ("dataset", "total", "spent", "remaining", "max_per_query", "period")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    MAX_PER_QUERY_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    total: PrivacyLoss
    spent: PrivacyLoss
    remaining: PrivacyLoss
    max_per_query: PrivacyLoss
    period: BudgetPeriod
    def __init__(self, dataset: _Optional[str] = ..., total: _Optional[_Union[PrivacyLoss, _Mapping]] = ..., spent: _Optional[_Union[PrivacyLoss, _Mapping]] = ..., remaining: _Optional[_Union[PrivacyLoss, _Mapping]] = ..., max_per_query: _Optional[_Union[PrivacyLoss, _Mapping]] = ..., period: _Optional[_Union[BudgetPeriod, _Mapping]] = ...) -> None: ...

class BudgetPeriod(_message.Message):
    __slots__ = ("period", "name", "total", "spent", "remaining")
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    period: str
    name: str
    total: PrivacyLoss
    spent: PrivacyLoss
    remaining: PrivacyLoss
    def __init__(self, period: _Optional[str] = ..., name: _Optional[str] = ..., total: _Optional[_Union[PrivacyLoss, _Mapping]] = ..., spent: _Optional[_Union[PrivacyLoss, _Mapping]] = ..., remaining: _Optional[_Union[PrivacyLoss, _Mapping]] = ...) -> None: ...

class GetNodeInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetNodeInfoResponse(_message.Message):
    __slots__ = ("node_id", "schema", "budget", "software_version", "audit_head")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    SOFTWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    AUDIT_HEAD_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    schema: Schema
    budget: Budget
    software_version: str
    audit_head: AuditHead
    def __init__(self, node_id: _Optional[str] = ..., schema: _Optional[_Union[Schema, _Mapping]] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ..., software_version: _Optional[str] = ..., audit_head: _Optional[_Union[AuditHead, _Mapping]] = ...) -> None: ...

class AuditHead(_message.Message):
    __slots__ = ("seq", "hash")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    seq: int
    hash: str
    def __init__(self, seq: _Optional[int] = ..., hash: _Optional[str] = ...) -> None: ...

class Occasion(_message.Message):
    __slots__ = ("target_month", "window_lower", "window_upper")
    TARGET_MONTH_FIELD_NUMBER: _ClassVar[int]
    WINDOW_LOWER_FIELD_NUMBER: _ClassVar[int]
    WINDOW_UPPER_FIELD_NUMBER: _ClassVar[int]
    target_month: int
    window_lower: int
    window_upper: int
    def __init__(self, target_month: _Optional[int] = ..., window_lower: _Optional[int] = ..., window_upper: _Optional[int] = ...) -> None: ...

class CategoryFilter(_message.Message):
    __slots__ = ("column", "values")
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    column: str
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, column: _Optional[str] = ..., values: _Optional[_Iterable[str]] = ...) -> None: ...

class RangeFilter(_message.Message):
    __slots__ = ("column", "lower", "upper")
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    column: str
    lower: float
    upper: float
    def __init__(self, column: _Optional[str] = ..., lower: _Optional[float] = ..., upper: _Optional[float] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("category", "range")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    category: CategoryFilter
    range: RangeFilter
    def __init__(self, category: _Optional[_Union[CategoryFilter, _Mapping]] = ..., range: _Optional[_Union[RangeFilter, _Mapping]] = ...) -> None: ...

class Query(_message.Message):
    __slots__ = ("statistic", "table", "column", "filters", "group_by", "loss", "occasion", "baseline", "bin_edges", "clip", "quantile", "terms", "split", "clip_counts", "split_by_presence")
    STATISTIC_FIELD_NUMBER: _ClassVar[int]
    TABLE_FIELD_NUMBER: _ClassVar[int]
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    OCCASION_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    BIN_EDGES_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    QUANTILE_FIELD_NUMBER: _ClassVar[int]
    TERMS_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    CLIP_COUNTS_FIELD_NUMBER: _ClassVar[int]
    SPLIT_BY_PRESENCE_FIELD_NUMBER: _ClassVar[int]
    statistic: Statistic
    table: str
    column: str
    filters: _containers.RepeatedCompositeFieldContainer[Filter]
    group_by: _containers.RepeatedScalarFieldContainer[str]
    loss: PrivacyLoss
    occasion: Occasion
    baseline: Occasion
    bin_edges: _containers.RepeatedScalarFieldContainer[float]
    clip: Bounds
    quantile: float
    terms: _containers.RepeatedCompositeFieldContainer[Term]
    split: MeanSplit
    clip_counts: bool
    split_by_presence: Occasion
    def __init__(self, statistic: _Optional[_Union[Statistic, str]] = ..., table: _Optional[str] = ..., column: _Optional[str] = ..., filters: _Optional[_Iterable[_Union[Filter, _Mapping]]] = ..., group_by: _Optional[_Iterable[str]] = ..., loss: _Optional[_Union[PrivacyLoss, _Mapping]] = ..., occasion: _Optional[_Union[Occasion, _Mapping]] = ..., baseline: _Optional[_Union[Occasion, _Mapping]] = ..., bin_edges: _Optional[_Iterable[float]] = ..., clip: _Optional[_Union[Bounds, _Mapping]] = ..., quantile: _Optional[float] = ..., terms: _Optional[_Iterable[_Union[Term, _Mapping]]] = ..., split: _Optional[_Union[MeanSplit, _Mapping]] = ..., clip_counts: _Optional[bool] = ..., split_by_presence: _Optional[_Union[Occasion, _Mapping]] = ...) -> None: ...

class MeanSplit(_message.Message):
    __slots__ = ("count", "sum", "sum_squares")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SUM_FIELD_NUMBER: _ClassVar[int]
    SUM_SQUARES_FIELD_NUMBER: _ClassVar[int]
    count: float
    sum: float
    sum_squares: float
    def __init__(self, count: _Optional[float] = ..., sum: _Optional[float] = ..., sum_squares: _Optional[float] = ...) -> None: ...

class Bounds(_message.Message):
    __slots__ = ("lower", "upper")
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    lower: float
    upper: float
    def __init__(self, lower: _Optional[float] = ..., upper: _Optional[float] = ...) -> None: ...

class Term(_message.Message):
    __slots__ = ("column", "occasion", "baseline", "category", "clip")
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    OCCASION_FIELD_NUMBER: _ClassVar[int]
    BASELINE_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    CLIP_FIELD_NUMBER: _ClassVar[int]
    column: str
    occasion: Occasion
    baseline: Occasion
    category: str
    clip: Bounds
    def __init__(self, column: _Optional[str] = ..., occasion: _Optional[_Union[Occasion, _Mapping]] = ..., baseline: _Optional[_Union[Occasion, _Mapping]] = ..., category: _Optional[str] = ..., clip: _Optional[_Union[Bounds, _Mapping]] = ...) -> None: ...

class RunQueryRequest(_message.Message):
    __slots__ = ("idempotency_key", "query")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    query: Query
    def __init__(self, idempotency_key: _Optional[str] = ..., query: _Optional[_Union[Query, _Mapping]] = ...) -> None: ...

class NoisyValue(_message.Message):
    __slots__ = ("name", "value", "noise_scale", "noise_variance", "epsilon", "rho")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    NOISE_SCALE_FIELD_NUMBER: _ClassVar[int]
    NOISE_VARIANCE_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    RHO_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: float
    noise_scale: float
    noise_variance: float
    epsilon: float
    rho: float
    def __init__(self, name: _Optional[str] = ..., value: _Optional[float] = ..., noise_scale: _Optional[float] = ..., noise_variance: _Optional[float] = ..., epsilon: _Optional[float] = ..., rho: _Optional[float] = ...) -> None: ...

class GroupValue(_message.Message):
    __slots__ = ("column", "value")
    COLUMN_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    column: str
    value: str
    def __init__(self, column: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...

class Cell(_message.Message):
    __slots__ = ("group", "values", "suppressed")
    GROUP_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    SUPPRESSED_FIELD_NUMBER: _ClassVar[int]
    group: _containers.RepeatedCompositeFieldContainer[GroupValue]
    values: _containers.RepeatedCompositeFieldContainer[NoisyValue]
    suppressed: bool
    def __init__(self, group: _Optional[_Iterable[_Union[GroupValue, _Mapping]]] = ..., values: _Optional[_Iterable[_Union[NoisyValue, _Mapping]]] = ..., suppressed: _Optional[bool] = ...) -> None: ...

class Release(_message.Message):
    __slots__ = ("cells", "center", "lower", "upper", "mechanism", "term_bounds", "min_group_size")
    CELLS_FIELD_NUMBER: _ClassVar[int]
    CENTER_FIELD_NUMBER: _ClassVar[int]
    LOWER_FIELD_NUMBER: _ClassVar[int]
    UPPER_FIELD_NUMBER: _ClassVar[int]
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    TERM_BOUNDS_FIELD_NUMBER: _ClassVar[int]
    MIN_GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    cells: _containers.RepeatedCompositeFieldContainer[Cell]
    center: float
    lower: float
    upper: float
    mechanism: str
    term_bounds: _containers.RepeatedCompositeFieldContainer[Bounds]
    min_group_size: float
    def __init__(self, cells: _Optional[_Iterable[_Union[Cell, _Mapping]]] = ..., center: _Optional[float] = ..., lower: _Optional[float] = ..., upper: _Optional[float] = ..., mechanism: _Optional[str] = ..., term_bounds: _Optional[_Iterable[_Union[Bounds, _Mapping]]] = ..., min_group_size: _Optional[float] = ...) -> None: ...

class RunQueryResponse(_message.Message):
    __slots__ = ("idempotency_key", "query", "release", "charged", "budget", "replayed", "node_id", "pooled_only", "audit_head")
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    CHARGED_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    REPLAYED_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    POOLED_ONLY_FIELD_NUMBER: _ClassVar[int]
    AUDIT_HEAD_FIELD_NUMBER: _ClassVar[int]
    idempotency_key: str
    query: Query
    release: Release
    charged: PrivacyLoss
    budget: Budget
    replayed: bool
    node_id: str
    pooled_only: bool
    audit_head: AuditHead
    def __init__(self, idempotency_key: _Optional[str] = ..., query: _Optional[_Union[Query, _Mapping]] = ..., release: _Optional[_Union[Release, _Mapping]] = ..., charged: _Optional[_Union[PrivacyLoss, _Mapping]] = ..., budget: _Optional[_Union[Budget, _Mapping]] = ..., replayed: _Optional[bool] = ..., node_id: _Optional[str] = ..., pooled_only: _Optional[bool] = ..., audit_head: _Optional[_Union[AuditHead, _Mapping]] = ...) -> None: ...
