"""Reports for people: the study report, each member's report, figures and tables, in English and Dutch."""
