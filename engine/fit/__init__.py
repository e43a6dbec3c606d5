"""Fitting: calibration to observed events and policy optimisation on the relaxed kernel."""
