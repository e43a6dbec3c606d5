"""Compilation: the second call of the kernel does not recompile, and a second process with
the same shapes loads the kernel from the persistent cache instead of compiling it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from engine import simulate
from engine.config.schema import Config
from engine.sim.rollout import sharded_advance
from tests.conftest import small_dict

ROOT = Path(__file__).resolve().parents[2]
TINY = small_dict(run={"n_paths": 256, "steps": 8, "fan_points": 2, "cascade_rounds": 2})

PROBE = """
import json, sys
import jax
hits = []
jax.monitoring.register_event_listener(lambda name, **kw: hits.append(name))
import engine
from engine.config.schema import Config
engine.simulate(Config.model_validate(json.loads(sys.argv[1])))
print(json.dumps({"hits": hits.count("/jax/compilation_cache/cache_hits"),
                  "misses": hits.count("/jax/compilation_cache/cache_misses")}))
"""


def test_second_call_does_not_recompile():
    cfg = Config.model_validate(TINY)
    simulate(cfg)
    before = sharded_advance._cache_size()
    other = cfg.model_copy(update={"policy": cfg.policy.model_copy(update={"leverage_cap": 20.0})})
    simulate(cfg, [cfg, other])  # same shapes, new policy values: no new kernel
    assert sharded_advance._cache_size() == before


def _probe(cache_dir: Path) -> dict:
    env = {
        **os.environ,
        "LIQSTRESS_CACHE_DIR": str(cache_dir),
        "LIQSTRESS_CPU_DEVICES": "1",
        "PYTHONPATH": str(ROOT),
    }
    env.pop("XLA_FLAGS", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(TINY)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_second_process_hits_the_persistent_cache(tmp_path):
    first = _probe(tmp_path)
    assert first["hits"] == 0 and first["misses"] >= 1
    assert any(p.name.startswith("jit_sharded_advance") for p in tmp_path.iterdir())
    second = _probe(tmp_path)
    assert second["misses"] == 0 and second["hits"] >= 1
