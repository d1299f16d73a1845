"""Looking inside models: named activations (hooks and caches), the logit lens, attention maps, per-token loss,
probes and activation patching."""

from lmlab.interp.hooks import ActivationCache, hook_names, hooks_attached, run_with_cache, run_with_hooks
from lmlab.interp.transformer_lens import to_hooked_transformer

__all__ = [
    "ActivationCache",
    "hook_names",
    "hooks_attached",
    "run_with_cache",
    "run_with_hooks",
    "to_hooked_transformer",
]
