"""liqstress: Monte Carlo stress tests of leveraged crypto-derivatives markets in JAX.

Python API (the CLI is a thin shell over it):

    import engine
    cfg = engine.load_config()                 # the default scenario (10 Oct 2025)
    ds = engine.simulate(cfg)                  # xarray Dataset of loss distributions
    engine.summary_table(ds)                   # the key figures as text

Importing the package asks JAX for one host CPU device per core (see `engine.sim.cpu_devices`;
`LIQSTRESS_CPU_DEVICES=1` turns that off) so that simulations use every core. The API names
load on first use (PEP 562), so that `import engine.model` needs neither pydantic nor xarray.
"""

import importlib

from engine.sim.cpu_devices import configure_host_devices

configure_host_devices()

__version__ = "0.1.0"

# Public name -> (the module that defines it, its name there).
_API = {
    "Config": ("engine.config.schema", "Config"),
    "ConfigError": ("engine.config.errors", "ConfigError"),
    "Policy": ("engine.config.schema", "Policy"),
    "Progress": ("engine.sim.simulate", "ChunkProgress"),
    "Scenario": ("engine.config.schema", "Scenario"),
    "SimulationError": ("engine.config.errors", "SimulationError"),
    "default_config_path": ("engine.config.files", "default_config_path"),
    "load_config": ("engine.config.files", "load_config"),
    "simulate": ("engine.sim.simulate", "simulate"),
    "summary_table": ("engine.report.summary", "summary_table"),
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
    module, attr = _API[name]
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(_API))
