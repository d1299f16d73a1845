"""The run directory: what a run writes about itself (summary, provenance) and where its metrics go (loggers)."""
