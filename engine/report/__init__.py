"""Reports: comparison tables and plots, fit reports, terminal summaries and progress."""
