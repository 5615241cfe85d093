"""jaxcert: robust and certified deep metric learning (image retrieval by embedding distance) in JAX.

For your own encoder `embed(images) -> (batch, d)`, one call each (`jaxcert.api`):
`certify_retrieval` (interval bounds: Recall@K, CR-Recall@K under query and candidate attacks),
`certify_smoothed_retrieval` (Gaussian smoothing: certified L2 radius of 1-NN retrieval) and
`attack_retrieval` (PGD ranking attacks: ER-Recall@K). They are imported on first use, so
`import jaxcert.<module>` stays as light as that module.

Modules: `data` (datasets and samplers), `models` (Flax encoders), `losses`, `training`,
`retrieval` and `metrics` (blocked top-k, Recall@K, mAP@R), `bounds` (interval bound propagation over
jaxprs, certified ranks), `smoothing` (Gaussian smoothing certificates), `attacks` (PGD and friends),
`parallel` (device meshes), `report` (tables and plots), `cli` (the drivers' error reporting).
"""

import importlib

__version__ = '0.1.0'

__all__ = [
    'AttackedRetrieval',
    'CertifiedRetrieval',
    'SmoothedRetrieval',
    'attack_retrieval',
    'certify_retrieval',
    'certify_smoothed_retrieval',
]


def __getattr__(name):
  if name in __all__:
    return getattr(importlib.import_module('jaxcert.api'), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(list(globals()) + __all__)
