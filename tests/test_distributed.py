"""Two processes joined by JAX's distributed runtime (CPU collectives over loopback) produce
the same cube as one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import xarray as xr

from engine import simulate
from engine.config import Config
from tests.conftest import small_dict

ROOT = Path(__file__).resolve().parents[1]
# 600 paths: two chunks of 512 over 2 global devices, the second one padded.
CFG = small_dict(run={"n_paths": 600, "steps": 12, "fan_points": 4, "chunk_size": 512, "cascade_rounds": 4})

WORKER = """
import json, sys
from engine import distributed
distributed.initialize(f"127.0.0.1:{sys.argv[1]}", 2, int(sys.argv[2]))
import jax
import engine
from engine.config import Config
assert jax.process_count() == 2 and len(jax.devices()) == 2
ds = engine.simulate(Config.model_validate(json.loads(sys.argv[3])))
if distributed.is_writer():
    ds.to_netcdf(sys.argv[4])
distributed.shutdown()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
    out = tmp_path / "cube.nc"
    env = {**os.environ, "LIQSTRESS_CPU_DEVICES": "1", "LIQSTRESS_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": str(ROOT)}
    env.pop("XLA_FLAGS", None)
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, port, str(i), json.dumps(CFG), str(out)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        results = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err[-3000:]
    single = simulate(Config.model_validate(CFG))
    with xr.open_dataset(out) as multi:
        xr.testing.assert_identical(multi.load(), single)
