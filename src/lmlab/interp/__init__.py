"""Looking inside models: named activations (hooks and caches), the logit lens, attention maps, per-token loss,
probes, activation patching and steering."""

from lmlab.interp.hooks import ActivationCache, hook_names, hooks_attached, run_with_cache, run_with_hooks
from lmlab.interp.patching import PatchResult, patch_grid, recovery
from lmlab.interp.probe import ProbeResult, fit_probes, probe_layers
from lmlab.interp.steering import SteeringVector, contrast_vector, steering
from lmlab.interp.transformer_lens import to_hooked_transformer

__all__ = [
    "ActivationCache",
    "PatchResult",
    "ProbeResult",
    "SteeringVector",
    "contrast_vector",
    "fit_probes",
    "hook_names",
    "hooks_attached",
    "patch_grid",
    "probe_layers",
    "recovery",
    "run_with_cache",
    "run_with_hooks",
    "steering",
    "to_hooked_transformer",
]
