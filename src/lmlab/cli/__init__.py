"""Command line: the only code that touches Hydra's entry points."""
