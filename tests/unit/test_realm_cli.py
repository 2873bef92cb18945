"""`macula realm init | admit`: an authority key made once, credentials that verify."""

from __future__ import annotations

import os
import stat
import time

from macula.cli.main import main
from macula.identity.keys import read_private_key
from macula.identity.realm import verify

NODE = "ab" * 32


def test_init_then_admit_makes_a_credential_that_verifies(tmp_path, capsys):
    key = tmp_path / "realm.key"
    assert main(["realm", "init", "--key", str(key)]) == 0
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    authority = read_private_key(key, "authority key").public_key
    assert authority.hex() in capsys.readouterr().out
    assert main(["realm", "init", "--key", str(key)]) == 2          # never overwritten
    assert "never overwritten" in capsys.readouterr().err
    out = tmp_path / "n.credential"
    assert main(["realm", "admit", NODE, "--key", str(key), "--realm", "home",
                 "--roles", "node,bridge", "--expires", "30d", "--out", str(out)]) == 0
    c = verify(out.read_bytes(), realm="home", node_id=bytes.fromhex(NODE),
               authorities={authority}, now=time.time())
    assert c.roles == ("bridge", "node") and 29 * 86400 < c.expires - c.issued <= 30 * 86400


def test_admit_refuses_bad_input_with_one_line(tmp_path, capsys):
    key = tmp_path / "realm.key"
    main(["realm", "init", "--key", str(key)])
    capsys.readouterr()
    for argv, what in [
        (["realm", "admit", "xyz", "--key", str(key), "--realm", "home"], "NODE_ID"),
        (["realm", "admit", NODE, "--key", str(key), "--realm", "home", "--expires", "soon"],
         "--expires"),
        (["realm", "admit", NODE, "--key", str(tmp_path / "none"), "--realm", "home"],
         "cannot read authority key"),
        (["realm", "admit", NODE, "--key", str(key), "--realm", "bad realm!"], "realm"),
    ]:
        assert main(argv) in (2, 78)
        err = capsys.readouterr().err
        assert what in err and "Traceback" not in err and err.count("\n") == 1, err



def test_revoke_signs_the_whole_list_and_refuses_an_older_serial(tmp_path, capsys):
    from macula.identity.realm import verify_revocations

    key, out = tmp_path / "realm.key", tmp_path / "revoked"
    main(["realm", "init", "--key", str(key)])
    authority = read_private_key(key, "authority key").public_key
    base = ["realm", "revoke", "--key", str(key), "--realm", "home", "--out", str(out)]
    assert main([*base, NODE, "--serial", "1"]) == 0
    assert verify_revocations(out.read_bytes(), realm="home", authorities={authority}) == \
        (1, frozenset({bytes.fromhex(NODE)}))
    capsys.readouterr()
    assert main([*base, NODE, "cd" * 32, "--serial", "1"]) == 2     # not newer
    assert "higher" in capsys.readouterr().err
    assert main([*base, NODE, "cd" * 32, "--serial", "2"]) == 0
    assert verify_revocations(out.read_bytes(), realm="home", authorities={authority})[0] == 2
