"""The .deb and the systemd units in it: contents, `systemd-analyze verify`, sysusers, the
generator and the conffile, all run for real on the extracted package."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib

from macula.config.schema import SECTIONS
from pathlib import Path

import pytest

from macula.config import load_config
from macula.hw import detect_limits

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "hw"
ELF_MACHINE = {"amd64": 62, "arm64": 183, "armhf": 40}   # e_machine: x86-64, AArch64, ARM
LIB = "usr/lib/macula-agent"

pytestmark = pytest.mark.skipif(not (shutil.which("dpkg-deb") and shutil.which("systemd-analyze")),
                                reason="needs dpkg-deb and systemd-analyze")


def build(arch: str, out: Path) -> Path:
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run([str(REPO / "packaging/build-deb.sh"), arch, str(out)], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    deb = Path(result.stdout.strip().splitlines()[-1])
    assert deb.name == f"macula-agent_0.1.0-1_{arch}.deb"
    return deb


@pytest.fixture(scope="module")
def debs(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """Each architecture's .deb and its extracted tree, built once for this module."""
    out = tmp_path_factory.mktemp("deb")
    built = {}
    for arch in ELF_MACHINE:
        deb = build(arch, out)
        root = out / f"root-{arch}"
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        built[arch] = (deb, root)
    # verify resolves ExecStart= and the units it depends on inside --root: give the amd64
    # tree this host's systemd units.
    shutil.copytree("/lib/systemd/system", built["amd64"][1] / "lib/systemd/system",
                    symlinks=True, dirs_exist_ok=True)
    return built


@pytest.fixture
def amd64(debs) -> tuple[Path, Path]:
    return debs["amd64"]


def field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.parametrize("arch", sorted(ELF_MACHINE))
def test_each_architecture_bundles_its_own_qh3(debs, arch: str) -> None:
    deb, root = debs[arch]
    assert field(deb, "Architecture") == arch
    listing = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True,
                             check=True).stdout
    assert f"./{LIB}/qh3/_hazmat.abi3.so" in listing
    header = (root / LIB / "qh3/_hazmat.abi3.so").read_bytes()[:20]
    little = header[5] == 1
    assert int.from_bytes(header[18:20], "little" if little else "big") == ELF_MACHINE[arch]


def test_control_fields_and_conffile(amd64) -> None:
    deb, root = amd64
    assert field(deb, "Package") == "macula-agent"
    depends = field(deb, "Depends")
    for package in ("python3 (>= 3.11)", "python3-msgpack",
                    "python3-cryptography", "python3-systemd", "python3-prometheus-client"):
        assert package in depends
    assert "psutil" not in depends   # nothing in the agent imports it
    conffiles = subprocess.run(["dpkg-deb", "--ctrl-tarfile", str(deb)], capture_output=True,
                               check=True).stdout
    assert b"./conffiles" in conffiles
    text = (root / "etc/macula/agent.toml").read_text()
    assert tomllib.loads(text) == {name: {} for name in SECTIONS}  # every key commented out
    assert "# max_peers = \"per hardware profile, see `macula hw`\"" in text
    cfg = load_config(root / "etc/macula/agent.toml", env={}, limits=detect_limits()[1])
    assert cfg.network.listen_port == 9443


def test_package_layout(amd64) -> None:
    _, root = amd64
    for path in ("usr/bin/macula", "usr/libexec/macula-agent/firstboot",
                 "lib/systemd/system-generators/macula-agent-generator"):
        assert os.access(root / path, os.X_OK), path
        assert (root / path).read_text().startswith("#!/usr/bin/python3 -I\n")
    for module in ("macula.service.firstboot", "macula.service.generator"):
        assert (root / LIB / (module.replace(".", "/") + ".py")).is_file()
    profiles = sorted(p.name for p in (root / LIB / "macula/hw/profiles").glob("*.toml"))
    assert profiles == sorted(p.name for p in (REPO / "hw").glob("*.toml"))
    assert not list(root.rglob("__pycache__"))
    for unit in ("macula-agent.service", "macula-agent-firstboot.service"):
        assert (root / "lib/systemd/system" / unit).read_bytes() == (REPO / "systemd" / unit).read_bytes()


@pytest.mark.skipif(not (REPO / "agent/macula/cli/main.py").exists(), reason="the CLI is not merged yet")
def test_macula_command_module_is_packaged(amd64) -> None:
    assert (amd64[1] / LIB / "macula/cli/main.py").is_file()


def _generate_dropin(root: Path, board: str) -> Path:
    # The packaged generator, run by Debian's python3 from the extracted tree.
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    code = (f"import sys; sys.path.insert(0, {str(root / LIB)!r}); "
            "from macula.service.generator import main; "
            f"sys.exit(main([{str(root / 'run/systemd/generator')!r}], root={str(FIXTURES / board)!r}))")
    subprocess.run([python, "-I", "-c", code], check=True)
    return root / "run/systemd/generator/macula-agent.service.d/50-hw-limits.conf"


@pytest.mark.parametrize("unit", ["macula-agent.service", "macula-agent-firstboot.service"])
def test_systemd_analyze_verify_passes(amd64, unit: str) -> None:
    _, root = amd64
    dropin = _generate_dropin(root, "zero2w")
    assert "MemoryMax=160M" in dropin.read_text()
    # The generator's drop-in is checked too: put it where verify reads drop-ins.
    etc = root / "etc/systemd/system/macula-agent.service.d"
    etc.mkdir(parents=True, exist_ok=True)
    shutil.copy(dropin, etc / dropin.name)
    result = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "--man=no",
                             str(root / "lib/systemd/system" / unit)],
                            capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_verify_would_catch_a_broken_unit(amd64, tmp_path: Path) -> None:
    _, root = amd64
    broken = root / "lib/systemd/system/macula-broken.service"
    broken.write_text((REPO / "systemd/macula-agent.service").read_text()
                      .replace("ProtectSystem=strict", "ProtectSystem=stricter"))
    result = subprocess.run(["systemd-analyze", "verify", f"--root={root}", "--man=no", str(broken)],
                            capture_output=True, text=True)
    broken.unlink()
    assert "protect system value" in result.stderr   # rc stays 0: stderr is the signal


def test_unit_hardening_is_in_place() -> None:
    text = (REPO / "systemd/macula-agent.service").read_text()
    settings = dict(re.findall(r"^(\w+)=(.*)$", text, re.M))
    assert settings["Type"] == "notify" and settings["NotifyAccess"] == "main"
    assert settings["ExecStart"] == "/usr/bin/macula run --config /etc/macula/agent.toml"
    assert settings["CapabilityBoundingSet"] == ""
    assert settings["RestrictAddressFamilies"] == "AF_INET AF_INET6 AF_UNIX AF_NETLINK"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices",
                "ProtectKernelTunables", "ProtectControlGroups", "LockPersonality",
                "MemoryDenyWriteExecute"):
        assert settings[key] == "yes", key
    assert settings["ProtectSystem"] == "strict"
    assert "ProcSubset" not in settings        # hardware detection reads /proc/cpuinfo


def test_man_page_renders_without_warnings(amd64) -> None:
    if not shutil.which("man"):
        pytest.skip("man is not installed")
    _, root = amd64
    result = subprocess.run(["man", "--warnings", "-l", str(root / "usr/share/man/man1/macula.1.gz")],
                            capture_output=True, text=True, env={**os.environ, "MANWIDTH": "80"})
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "macula - edge agent of the Macula mesh" in result.stdout


def test_sysusers_creates_the_system_user(tmp_path: Path) -> None:
    if not shutil.which("systemd-sysusers"):
        pytest.skip("systemd-sysusers is not installed")
    conf = tmp_path / "usr/lib/sysusers.d/macula.conf"
    conf.parent.mkdir(parents=True)
    shutil.copy(REPO / "systemd/macula.sysusers", conf)
    (tmp_path / "etc").mkdir()
    subprocess.run(["systemd-sysusers", f"--root={tmp_path}", "macula.conf"], check=True,
                   capture_output=True)
    entry = (tmp_path / "etc/passwd").read_text().strip().split(":")
    assert entry[0] == "macula" and int(entry[2]) < 1000
    assert entry[5:] == ["/var/lib/macula", "/usr/sbin/nologin"]
    assert (tmp_path / "etc/group").read_text().startswith("macula:x:")


@pytest.mark.parametrize("script", ["postinst", "prerm", "postrm"])
def test_maintainer_scripts_parse(script: str) -> None:
    subprocess.run(["sh", "-n", str(REPO / "packaging/debian" / script)], check=True)


def test_build_is_reproducible(amd64, tmp_path: Path) -> None:
    deb, _ = amd64
    assert build("amd64", tmp_path).read_bytes() == deb.read_bytes()


def test_packaged_tree_runs_on_debians_python_and_libraries(amd64) -> None:
    # Debian 12's python3 with python3-cryptography 38 and -msgpack 1.0 and the
    # bundled qh3: import everything, make a certificate, finish a QUIC handshake, under MDWE.
    from test_service_hardening import SCRIPT

    python = Path("/usr/bin/python3")
    probe = subprocess.run([str(python), "-c", "import cryptography, msgpack, systemd"],
                           capture_output=True) if python.exists() else None
    if probe is None or probe.returncode:
        pytest.skip("Debian's python3 with python3-cryptography, -msgpack, -systemd needed")
    code = f"import sys; sys.path.insert(0, {str(amd64[1] / LIB)!r})\n" + SCRIPT
    result = subprocess.run([str(python), "-I", "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("handshake-ok", "no-mdwe")


def test_lintian_finds_no_errors_or_warnings(debs) -> None:
    if not shutil.which("lintian"):
        pytest.skip("lintian is not installed")
    for arch, (deb, _) in debs.items():
        result = subprocess.run(["lintian", "--fail-on", "error,warning", str(deb)],
                                capture_output=True, text=True)
        tags = [line for line in result.stdout.splitlines() if line[:2] in ("E:", "W:")]
        assert result.returncode == 0 and not tags, (arch, tags, result.stderr)
