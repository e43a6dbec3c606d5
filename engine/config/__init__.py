"""Configuration: the pydantic schema, config files and overrides, sweep grids, errors, and the build of model parameters from a config."""
