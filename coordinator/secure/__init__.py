"""Secure aggregation as the coordinator runs it: rounds, survivors, the masked sum."""
