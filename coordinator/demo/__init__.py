"""Demo tooling: synthetic member networks and local launchers (not for members)."""
