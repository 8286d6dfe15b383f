"""What node and coordinator must agree on, and nothing else.

Installed as `bridgestat.common`: `query` (statistics, occasions, terms, the query value),
`wire` (its one protobuf encoding), `labels` (cell and value names in releases), `loss` (rho
to epsilon), `names` (member names, host:port), `certs` (certificate checks), `headers`
(gRPC metadata), `numbers` and `files` (reading numbers and YAML files the same way).
Node and coordinator import it, never each other; it imports neither
(`tests/unit/test_architecture.py` enforces all three rules).
"""
