"""Node identity (Ed25519), TLS material (ECDSA P-256), pinning and the CONNECT binding."""

from macula.identity.certs import (
    TlsMaterial, ephemeral_dev_material, load_or_create_dev_material, load_production_material,
)
from macula.identity.keys import Identity, ephemeral_identity, load_or_create_identity, node_id_of
from macula.identity.tofu import TofuStore

__all__ = ["Identity", "TlsMaterial", "TofuStore", "ephemeral_dev_material", "ephemeral_identity",
           "load_or_create_dev_material", "load_or_create_identity", "load_production_material",
           "node_id_of"]
