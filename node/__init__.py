"""The bridgestat node: answers typed aggregate queries with DP releases."""
