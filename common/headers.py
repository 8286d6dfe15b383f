"""gRPC metadata the coordinator's hub and the nodes exchange (connect mode)."""

from __future__ import annotations

# Initial metadata the hub sends on a node's Connect stream once it has accepted the Hello:
# the node counts itself connected only then.
SESSION_HEADER = "bridgestat-session"
SESSION_ACCEPTED = "accepted"
# On a researcher's call to the hub: which member the call is for.
MEMBER_HEADER = "bridgestat-member"
