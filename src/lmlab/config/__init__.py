"""Configuration: the config tree and its resolvers, typed schemas, validation before a run, resuming a run's config,
and the Optuna sweeper. With `cli/`, the only package that imports Hydra or OmegaConf."""
