"""Configuration: one TOML file, embedded defaults, MACULA_* environment overrides."""

from macula.config.load import DEFAULT_PATH, load_config, render_defaults, replace
from macula.config.schema import Config, parse_address

__all__ = ["DEFAULT_PATH", "Config", "load_config", "parse_address", "render_defaults", "replace"]
