"""jaxcert: robust and certified deep metric learning (image retrieval by embedding distance) in JAX.

For your own encoder `embed(images) -> (batch, d)`, one call each (`jaxcert.api`):
`certify_retrieval` (interval bounds: Recall@K, CR-Recall@K under query and candidate attacks),
`certify_smoothed_retrieval` (Gaussian smoothing: certified L2 radius of 1-NN retrieval) and
`attack_retrieval` (PGD ranking attacks: ER-Recall@K).

Modules: `data` (datasets and samplers), `models` (Flax encoders), `losses`, `training`,
`retrieval` and `metrics` (blocked top-k, Recall@K, mAP@R), `bounds` (interval bound propagation over
jaxprs, certified ranks), `smoothing` (Gaussian smoothing certificates), `attacks` (PGD and friends),
`parallel` (device meshes), `report` (tables and plots).
"""

from jaxcert.api import attack_retrieval
from jaxcert.api import AttackedRetrieval
from jaxcert.api import certify_retrieval
from jaxcert.api import certify_smoothed_retrieval
from jaxcert.api import CertifiedRetrieval
from jaxcert.api import SmoothedRetrieval

__version__ = '0.1.0'

__all__ = [
    'AttackedRetrieval',
    'CertifiedRetrieval',
    'SmoothedRetrieval',
    'attack_retrieval',
    'certify_retrieval',
    'certify_smoothed_retrieval',
]
