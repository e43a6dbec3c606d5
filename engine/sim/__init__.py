"""Simulation: rollouts over paths and devices, streaming reductions, the multi-process protocol, diagnostics."""
