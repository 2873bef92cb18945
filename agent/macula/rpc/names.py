"""Procedure names: what can be advertised in the DHT as the service ``rpc.NAME``.

A name the DHT cannot hold could be registered but never found from another node, and
looking it up failed as a bug; it is refused up front instead (BAD_FIELD), in the SDK
and on the node.
"""

from __future__ import annotations

import re

from macula.errors import ErrorCode, MaculaError

SERVICE_PREFIX = "rpc."
# a DHT service name is 1-64 of [A-Za-z0-9._-], first a letter or digit; the prefix takes 4
MAX_PROCEDURE = 64 - len(SERVICE_PREFIX)
_PROCEDURE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_PROCEDURE - 1}}}")


def procedure_error(name: object) -> str | None:
    """Why ``name`` is not a procedure name, or None when it is one."""
    if isinstance(name, str) and _PROCEDURE.fullmatch(name):
        return None
    return (f"procedure {name!r}: expected 1-{MAX_PROCEDURE} letters, digits, '.', '_', '-', "
            "first a letter or digit")


def check_procedure(name: object) -> None:
    """MaculaError (BAD_FIELD) unless ``name`` is a procedure name."""
    why = procedure_error(name)
    if why is not None:
        raise MaculaError(why, code=ErrorCode.BAD_FIELD)
