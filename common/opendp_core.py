"""The OpenDP names the node and the loss conversion use, from OpenDP's core modules only.

`opendp.prelude` also imports `opendp.extras` (its scikit-learn, numpy, Polars, MBI and Ibis
helpers), which the node never calls: importing these names from `opendp.mod`,
`opendp.domains`, `opendp.metrics`, `opendp.measures`, `opendp.typing` and the three
constructor modules builds the same measurements for less memory (benchmarks/node_memory.py).
Used as `from bridgestat.common import opendp_core as dp`, so that calls read as with the
prelude (`dp.m.make_gaussian`, `dp.atom_domain`).
"""

from __future__ import annotations

from opendp import combinators as c
from opendp import measurements as m
from opendp import transformations as t
from opendp.domains import atom_domain, vector_domain
from opendp.measures import max_divergence
from opendp.metrics import absolute_distance, l2_distance, symmetric_distance
from opendp.mod import (
    Measurement,
    OpenDPException,
    deserialize,
    enable_features,
    serialize,
)
from opendp.typing import RuntimeType, i64

__all__ = [
    "Measurement",
    "OpenDPException",
    "RuntimeType",
    "absolute_distance",
    "atom_domain",
    "c",
    "deserialize",
    "enable_features",
    "i64",
    "l2_distance",
    "m",
    "max_divergence",
    "serialize",
    "symmetric_distance",
    "t",
    "vector_domain",
]
