"""liqstress: Monte Carlo stress tests of leveraged crypto-derivatives markets in JAX.

Python API (the CLI is a thin shell over it):

    import engine
    cfg = engine.load_config()                 # the default scenario (10 Oct 2025)
    ds = engine.simulate(cfg)                  # xarray Dataset of loss distributions
    engine.summary_table(ds)                   # the key figures as text

Importing the package asks JAX for one host CPU device per core (see `engine.devices`;
`LIQSTRESS_CPU_DEVICES=1` turns that off) so that simulations use every core.
"""

from engine.sim.devices import configure_host_devices

configure_host_devices()

from engine.config.errors import ConfigError, SimulationError
from engine.config.files import default_config_path, load_config
from engine.config.schema import Config, Policy, Scenario
from engine.report.summary import summary_table
from engine.sim.simulate import ChunkProgress as Progress
from engine.sim.simulate import simulate

__version__ = "0.1.0"

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
