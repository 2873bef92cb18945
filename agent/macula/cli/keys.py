"""`macula keys show | forget NAME`."""

from __future__ import annotations

import hashlib

from macula.config import Config
from macula.identity import TofuStore, load_or_create_dev_material, load_or_create_identity
from macula.identity.tofu import TOFU_FILE
from macula.node import Node


def keys_show(cfg: Config) -> int:
    node = Node(cfg, control=False)
    fresh = not (node.state_dir / "identity.key").exists()
    identity = load_or_create_identity(node.state_dir)
    print(f"node name:     {node.name}")
    print(f"node id:       {identity.node_id.hex()}")
    print(f"identity key:  {identity.public_key.hex()} (Ed25519{', created now' if fresh else ''})")
    print(f"state dir:     {node.state_dir}")
    if cfg.tls.mode == "development":
        tls = load_or_create_dev_material(node.state_dir, identity.node_id)
        pins = TofuStore(node.state_dir / TOFU_FILE, cfg.limits.pinned_peers)
        print(f"certificate:   sha256 {hashlib.sha256(tls.cert_der).hexdigest()} (self-signed)")
        print(f"pinned peers:  {len(pins)}")
        for label, key, _, last in pins.entries():
            print(f"  {label:<40} {key[:16]}...")
    else:
        print(f"certificate:   {cfg.tls.cert_file} (production, CA {cfg.tls.ca_file})")
    return 0


def keys_forget(cfg: Config, name: str, realm: str | None) -> int:
    node = Node(cfg, control=False)
    pins = TofuStore(node.state_dir / TOFU_FILE, cfg.limits.pinned_peers)
    n = pins.forget(name, realm)
    print(f"forgot {n} pin(s) for {name!r}" if n else f"no pin for {name!r}")
    return 0 if n else 1
