"""Realm membership credentials (identity/realm.py): issue, verify, refuse, revoke."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings, strategies as st

from macula.errors import ErrorCode
from macula.identity.keys import ephemeral_identity
from macula.identity.realm import (
    MAX_CREDENTIAL, CredentialError, issue, issue_revocations, verify, verify_revocations,
)

AUTH = ephemeral_identity()
OTHER = ephemeral_identity()
NODE = b"\x07" * 32
NOW = 1_800_000_000


def cred(**kw) -> bytes:
    args = dict(realm="home", node_id=NODE, roles=("node",), issued=NOW, expires=NOW + 3600)
    args.update(kw)
    return issue(AUTH.sign, AUTH.public_key, **args)


def check(blob: bytes, **kw):
    args = dict(realm="home", node_id=NODE, authorities={AUTH.public_key}, now=NOW + 10)
    args.update(kw)
    return verify(blob, **args)


def test_a_credential_admits_its_node_to_its_realm():
    c = check(cred(roles=("node", "bridge")))
    assert (c.realm, c.node_id, c.roles, c.authority) == ("home", NODE, ("bridge", "node"),
                                                          AUTH.public_key)
    assert len(cred()) < 300


@pytest.mark.parametrize("blob_kw, check_kw, why", [
    ({}, {"realm": "office"}, "realm 'home'"),
    ({}, {"node_id": b"\x08" * 32}, "another node id"),
    ({}, {"now": NOW + 3600}, "expired"),
    ({}, {"authorities": {OTHER.public_key}}, "does not trust"),
    ({}, {"revoked": {NODE}}, "revoked"),
    ({"issued": NOW + 1000, "expires": 0}, {}, "future"),
])
def test_refusals_say_why(blob_kw, check_kw, why):
    with pytest.raises(CredentialError) as err:
        check(cred(**blob_kw), **check_kw)
    assert why in err.value.message and err.value.code is ErrorCode.CREDENTIAL_INVALID


def test_a_forged_or_altered_credential_is_refused():
    # signed by a stranger who names the trusted authority's key
    body = msgpack.unpackb(cred(), raw=False)[0]
    forged = msgpack.packb([body, OTHER.sign(b"macula-realm-credential\x00" + body)])
    with pytest.raises(CredentialError, match="signature"):
        check(forged)
    fields = msgpack.unpackb(body, raw=False)
    fields[3] = ["node", "bridge"]            # roles widened after signing
    altered = msgpack.packb([msgpack.packb(fields, use_bin_type=True),
                             msgpack.unpackb(cred(), raw=False)[1]], use_bin_type=True)
    with pytest.raises(CredentialError, match="signature"):
        check(altered)


def test_bounds_are_checked_before_any_signature():
    with pytest.raises(CredentialError, match="over"):
        check(b"\x00" * (MAX_CREDENTIAL + 1))
    with pytest.raises(CredentialError, match="roles"):
        cred(roles=[f"r{i}" for i in range(9)])
    with pytest.raises(CredentialError, match="times"):
        cred(issued=NOW, expires=NOW - 1)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=1200))
def test_garbage_only_ever_gives_a_credential_error(blob):
    with pytest.raises(CredentialError):
        check(blob)


def test_revocation_list_is_signed_and_versioned():
    blob = issue_revocations(AUTH.sign, AUTH.public_key, "home", [NODE], serial=3)
    serial, revoked = verify_revocations(blob, realm="home", authorities={AUTH.public_key})
    assert serial == 3 and revoked == {NODE}
    with pytest.raises(CredentialError):
        verify_revocations(blob, realm="office", authorities={AUTH.public_key})
    with pytest.raises(CredentialError):
        verify_revocations(blob, realm="home", authorities={OTHER.public_key})
    with pytest.raises(CredentialError, match="revoked"):
        check(cred(), revoked=revoked)
