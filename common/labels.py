"""Labels that travel in releases: a node writes them, the coordinator reads them back.

A histogram's cells are the public categories or bins, then MISSING (participants without a
value, or without one of the two occasions of a paired histogram). A paired histogram of a
category names its cells `transition(before, after)`; of a number without bins, SIGN_LABELS.
A mean's (and paired change's) values are COUNT, SUM and SUM_SQUARES; a count's is COUNT.
With clip counts, a mean also releases CLIPPED_BELOW and CLIPPED_ABOVE (values the public
clipping bounds cut at each end).
A mean split by presence at a follow-up occasion (attrition) has the group column PRESENCE
with the cells PRESENT and ABSENT, after any group-by columns.
"""

from __future__ import annotations

MISSING = "(missing)"
ARROW = " -> "
DECREASED, UNCHANGED, INCREASED = "decreased", "unchanged", "increased"
SIGN_LABELS = (DECREASED, UNCHANGED, INCREASED)
COUNT, SUM, SUM_SQUARES = "count", "sum", "sum_squares"
CLIPPED_BELOW, CLIPPED_ABOVE = "clipped_below", "clipped_above"
PRESENCE = "(follow-up)"  # not a column name: schema columns are identifiers
PRESENT, ABSENT = "present", "absent"
PRESENCE_CELLS = (PRESENT, ABSENT)


def transition(before: str, after: str) -> str:
    """The cell of a paired histogram of a category: 'single -> couple'."""
    return f"{before}{ARROW}{after}"
