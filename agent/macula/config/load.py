"""Load the TOML config, apply MACULA_* environment overrides, validate every key.

Order of precedence (last wins): embedded defaults < hardware-derived limits < file <
environment. Errors name the key and say what was expected.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
from pathlib import Path
from typing import Any, Mapping

from macula.config.schema import SECTIONS, Config
from macula.errors import ConfigError

DEFAULT_PATH = Path("/etc/macula/agent.toml")
ENV_PREFIX = "MACULA_"
# Short names operators know from the original (MACULA_REALM, MACULA_BOOTSTRAP_PEERS).
ENV_ALIASES = {
    "MACULA_REALM": ("node", "realm"),
    "MACULA_SEEDS": ("network", "seeds"),
    "MACULA_BOOTSTRAP_PEERS": ("network", "seeds"),
}
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _kind(f: dataclasses.Field) -> str:
    t = str(f.type)
    return "list" if t.startswith("tuple") else t


def _coerce(section: str, key: str, kind: str, value: Any, from_env: bool) -> Any:
    where = f"{section}.{key}"
    if from_env and isinstance(value, str):
        text = value.strip()
        try:
            if kind == "int":
                return int(text)
            if kind == "float":
                return float(text)
            if kind == "bool":
                low = text.lower()
                if low in _TRUE or low in _FALSE:
                    return low in _TRUE
                raise ValueError
            if kind == "list":
                return tuple(x.strip() for x in text.split(",") if x.strip())
        except ValueError:
            raise ConfigError(f"{where}: expected {kind}, got {value!r} from the environment") from None
        return text
    ok = {
        "int": type(value) is int,
        "float": type(value) in (int, float),
        "bool": type(value) is bool,
        "str": type(value) is str,
        "list": isinstance(value, (list, tuple)) and all(type(x) is str for x in value),
    }[kind]
    if not ok:
        expected = {"list": "a list of strings", "int": "an integer", "float": "a number",
                    "bool": "true or false", "str": "a string"}[kind]
        raise ConfigError(f"{where}: expected {expected}, got {type(value).__name__} {value!r}")
    if kind == "float":
        return float(value)
    if kind == "list":
        return tuple(value)
    return value


def _unknown(name: str, known: list[str], what: str) -> ConfigError:
    hint = difflib.get_close_matches(name, known, n=1)
    suggestion = f"; did you mean {hint[0]!r}?" if hint else f"; known: {', '.join(sorted(known))}"
    return ConfigError(f"unknown {what} {name!r}{suggestion}")


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    # neither is a TOMLDecodeError; uncaught they were a traceback, exit 1 and endless restarts
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: not UTF-8 "
                          f"(byte 0x{exc.object[exc.start]:02x} at offset {exc.start})") from None
    except RecursionError:  # tomllib recurses once per nesting level of arrays/inline tables
        raise ConfigError(f"config file {path} is not valid TOML: arrays or tables "
                          f"nested too deeply") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for var, value in env.items():
        if not var.startswith(ENV_PREFIX) or var in ENV_ALIASES:
            continue
        rest = var[len(ENV_PREFIX):].lower()
        section = next((s for s in SECTIONS if rest.startswith(s + "_")), None)
        if section is None:
            continue  # other MACULA_* variables (e.g. MACULA_CONFIG) are not keys
        key = rest[len(section) + 1:]
        if key not in {f.name for f in dataclasses.fields(SECTIONS[section])}:
            raise _unknown(key, [f.name for f in dataclasses.fields(SECTIONS[section])],
                           f"key in environment variable {var}: {section} has no key")
        out.setdefault(section, {})[key] = value
    # Aliases never beat the full name, and the first alias listed wins over later ones,
    # whatever order the environment happens to list them in.
    for var, (section, key) in ENV_ALIASES.items():
        if var in env:
            out.setdefault(section, {}).setdefault(key, env[var])
    return out


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None,
                limits: Mapping[str, Any] | None = None, hw_profile: str | None = None,
                system_file: bool = True) -> Config:
    """Build a validated Config.

    ``path``: a TOML file; None means $MACULA_CONFIG, else /etc/macula/agent.toml if it
    exists (and ``system_file``), else only the embedded defaults. ``limits``: the
    hardware-derived defaults for [limits]; None means detect them now (macula.hw).
    """
    env = os.environ if env is None else env
    if path is None and env.get("MACULA_CONFIG"):
        path = env["MACULA_CONFIG"]
    if path is None and not system_file:
        data, source = {}, "embedded defaults"
    elif path is None:
        data, source = ({}, "embedded defaults")
        if DEFAULT_PATH.exists():
            data, source = _read_file(DEFAULT_PATH), str(DEFAULT_PATH)
    else:
        data, source = _read_file(Path(path)), str(path)
    if limits is None:
        from macula.hw import detect_limits
        hw_profile, limits = detect_limits()

    for section in data:
        if section not in SECTIONS:
            raise _unknown(section, list(SECTIONS), "section")
        if not isinstance(data[section], dict):
            raise ConfigError(f"{section}: expected a [{section}] table")
    overrides = _env_overrides(env)

    built: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
        fields = {f.name: f for f in dataclasses.fields(cls)}
        file_values = data.get(section, {})
        for key in file_values:
            if key not in fields:
                raise _unknown(key, list(fields), f"key in [{section}]:")
        values: dict[str, Any] = {}
        for key, f in fields.items():
            if key in overrides.get(section, {}):
                value = _coerce(section, key, _kind(f), overrides[section][key], from_env=True)
            elif key in file_values:
                value = _coerce(section, key, _kind(f), file_values[key], from_env=False)
            elif section == "limits":
                if key not in limits:
                    raise ConfigError(f"limits.{key}: the hardware profile gives no default")
                value = limits[key]
            else:
                continue  # dataclass default
            check = f.metadata.get("check")
            if check is not None:
                try:
                    check(value)
                except ValueError as exc:
                    raise ConfigError(f"{section}.{key}: expected {exc}, got {value!r}") from None
            values[key] = value
        built[section] = cls(**values)
    cfg = Config(**built, source=source, hw_profile=hw_profile or "custom")
    if cfg.tls.mode == "production":
        missing = [k for k in ("cert_file", "key_file", "ca_file") if not getattr(cfg.tls, k)]
        if missing:
            raise ConfigError(f"tls.mode = 'production' needs {', '.join('tls.' + k for k in missing)}")
    if cfg.timeouts.reconnect_cap < cfg.timeouts.reconnect_base:
        raise ConfigError("timeouts.reconnect_cap: expected >= timeouts.reconnect_base")
    if cfg.cluster.probe_timeout >= cfg.cluster.probe_interval:
        raise ConfigError("cluster.probe_timeout: expected < cluster.probe_interval")
    return cfg


def replace(cfg: Config, **sections: dict[str, Any]) -> Config:
    """A copy of ``cfg`` with some keys changed, e.g. replace(cfg, network={"listen_port": 0})."""
    changes = {name: dataclasses.replace(getattr(cfg, name), **values)
               for name, values in sections.items()}
    return dataclasses.replace(cfg, **changes)


def render_defaults(limits: Mapping[str, Any]) -> str:
    """A commented TOML file with every key at its default (the packaged conffile)."""
    lines = ["# Macula agent configuration. Every key is optional; the value shown is the",
             "# default. Environment variables MACULA_<SECTION>_<KEY> override this file.", ""]
    for section, cls in SECTIONS.items():
        lines.append(f"[{section}]")
        if cls.__doc__ and section == "limits":
            lines.append(f"# {cls.__doc__.strip()}")
        for f in dataclasses.fields(cls):
            default = limits.get(f.name) if section == "limits" else f.default
            lines.append(f"# {f.metadata.get('doc', '')}")
            lines.append(f"# {f.name} = {_toml_value(default)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)
