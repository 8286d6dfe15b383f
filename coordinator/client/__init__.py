"""The researcher's side of the wire: the network file, the clients, fan-out, queries and their encoding, and the witness of members' audit heads."""
