"""Compiled kernels are let go when the process crowds its cap on memory mappings
(`engine.sim.code_space`), and kept otherwise."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from engine.sim import code_space


def test_mappings_are_counted_and_the_cap_read():
    held = code_space.mappings()
    assert held is None or held > 0
    assert code_space.max_mappings() > 0


def test_compiled_kernels_go_only_past_the_share(monkeypatch):
    f = jax.jit(lambda x: jnp.sin(x) * 2.0)
    f(jnp.ones(3))
    assert f._cache_size() == 1
    monkeypatch.setattr(code_space, "mappings", lambda: 100)
    monkeypatch.setattr(code_space, "max_mappings", lambda: 1_000)
    assert not code_space.release_if_crowded(0.5)
    assert f._cache_size() == 1
    monkeypatch.setattr(code_space, "mappings", lambda: 600)
    assert code_space.release_if_crowded(0.5)
    assert f._cache_size() == 0
    assert float(f(jnp.zeros(1))[0]) == 0.0  # compiles again


def test_nothing_is_dropped_where_the_system_does_not_count(monkeypatch):
    monkeypatch.setattr(code_space, "mappings", lambda: None)
    assert not code_space.release_if_crowded(0.0)
