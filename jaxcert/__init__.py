"""jaxcert: robust and certified deep metric learning (image retrieval by embedding distance) in JAX.

Modules: `data` (datasets and samplers), `models` (Flax encoders), `losses`, `training`,
`retrieval` and `metrics` (blocked top-k, Recall@K, mAP@R), `bounds` (interval bound propagation over
jaxprs, certified ranks), `smoothing` (Gaussian smoothing certificates), `attacks` (PGD and friends),
`parallel` (device meshes), `report` (tables and plots).
"""

__version__ = '0.1.0'
