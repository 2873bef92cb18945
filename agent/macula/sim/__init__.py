"""Deterministic discrete-event simulation of sans-IO cores (virtual clock, links)."""

from macula.sim.sim import Sim, SimError, SimStats, default_latency

__all__ = ["Sim", "SimError", "SimStats", "default_latency"]
