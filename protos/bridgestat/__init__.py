"""bridgestat: privacy-preserving federated analytics (namespace of node, coordinator, v1)."""
