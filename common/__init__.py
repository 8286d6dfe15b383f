"""What node and coordinator must agree on, and nothing else.

Installed as `bridgestat.common`. Both sides import it; it imports neither
(`tests/unit/test_architecture.py` enforces both rules).
"""
