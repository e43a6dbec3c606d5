"""liqstress: Monte Carlo stress tests of leveraged crypto-derivatives markets in JAX.

Python API (the CLI is a thin shell over it):

    import engine
    cfg = engine.load_config()                 # the default scenario (10 Oct 2025)
    ds = engine.simulate(cfg)                  # xarray Dataset of loss distributions
    engine.summary_table(ds)                   # the key figures as text

Importing the package asks JAX for one host CPU device per core (see `engine.sim.devices`;
`LIQSTRESS_CPU_DEVICES=1` turns that off) so that simulations use every core. The API names
load on first use (PEP 562), so that `import engine.model` needs neither pydantic nor xarray.
"""

import importlib

from engine.sim.devices import configure_host_devices

configure_host_devices()

__version__ = "0.1.0"

# Public name -> the module that defines it.
_API = {
    "Config": "engine.config.schema",
    "ConfigError": "engine.config.errors",
    "Policy": "engine.config.schema",
    "Progress": "engine.sim.simulate",
    "Scenario": "engine.config.schema",
    "SimulationError": "engine.config.errors",
    "default_config_path": "engine.config.files",
    "load_config": "engine.config.files",
    "simulate": "engine.sim.simulate",
    "summary_table": "engine.report.summary",
}

__all__ = [
    "Config",
    "ConfigError",
    "Policy",
    "Progress",
    "Scenario",
    "SimulationError",
    "__version__",
    "default_config_path",
    "load_config",
    "simulate",
    "summary_table",
]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
