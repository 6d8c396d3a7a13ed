"""Pure, seeded simulation helpers for tests and benchmarks (no I/O, no wall clock)."""

from __future__ import annotations

from wzp.sim.link import Link, LinkConfig, LinkStats, derive_seed, link_pair

__all__ = ["Link", "LinkConfig", "LinkStats", "derive_seed", "link_pair"]
