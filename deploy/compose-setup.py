"""One-shot set-up of the compose demo network (deploy/compose.yaml), run in the coordinator
image: a synthetic network of 3 members with a network CA and certificates (`bridgestat
synth`), then addresses for containers: each node listens on 0.0.0.0:50051 and the network
file reaches it by its service name. Runs once; a second `up` keeps the ledgers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

NET = Path("/net")

if not (NET / "network.yaml").exists():
    subprocess.run(["bridgestat", "synth", "--members", "3", "--seed", "7", "--out", str(NET)],
                   check=True)
    network = yaml.safe_load((NET / "network.yaml").read_text())
    for member in network["members"]:
        config_path = NET / member["name"] / "node.yaml"
        config = yaml.safe_load(config_path.read_text())
        config["listen"] = "0.0.0.0:50051"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        member["address"] = f"{member['name']}:50051"
    (NET / "network.yaml").write_text(yaml.safe_dump(network, sort_keys=False))
    for path in NET.rglob("*.key"):  # the node and coordinator run as uid 10001
        path.chmod(0o600)
    subprocess.run(["chown", "-R", "10001:10001", str(NET)], check=False)
print("network ready:", NET / "network.yaml")
