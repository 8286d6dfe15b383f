"""Generated gRPC stubs of the bridgestat.v1 contract (see protos/generate.py)."""
