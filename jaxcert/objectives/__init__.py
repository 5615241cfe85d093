"""Training methods by name (`config.method`): one `Method` (objective + its parameters) each.

  metric   triplet / contrastive / margin loss; with `config.noise_sigma > 0`, GDML (RetrievalGuard)
  tbt      TBT, triplet loss + IBP distance-bound tightness (Kakizaki et al. Eq. 20)
  fctb     FCTB, fine-tuning a pre-trained encoder on the candidate set (Kakizaki et al. Eq. 21)
  cibp     C-IBP, an IBP-trained classifier head on the encoder (Gowal et al. 2018; Kakizaki et al.)
  certified_triplet  the triplet hinge bounded over the QA and CA boxes (IBP; optional SABR or
           MTL-IBP boxes, Shi et al.'s warm-up regularisers), mixed with the clean loss by kappa
  adversarial  Panum et al. adversarial training: positives perturbed away from anchors, rate P(gamma=1)
  act      anti-collapse triplet (Zhou et al. 2021; the Kakizaki et al. ACT baseline)
  spectral AckMetric margin loss + top eigenvalues of W^T W (linear encoder)

A new method is a module here with a `Method` and one line in `METHODS`.
"""

from __future__ import annotations

from jaxcert.objectives import adversarial
from jaxcert.objectives import base
from jaxcert.objectives import certified
from jaxcert.objectives import metric
from jaxcert.objectives.base import Method
from jaxcert.objectives.base import ObjectiveInputs
from jaxcert.objectives.base import ParamsContext

METHODS: dict[str, Method] = {
    'metric': metric.METRIC,
    'tbt': certified.TBT,
    'fctb': certified.FCTB,
    'cibp': certified.CIBP,
    'certified_triplet': certified.CERTIFIED_TRIPLET,
    'adversarial': adversarial.ADVERSARIAL,
    'act': adversarial.ACT,
    'spectral': adversarial.SPECTRAL,
}


def get_method(name: str) -> Method:
  """The training method `name`, one of METHODS."""
  if name not in METHODS:
    raise ValueError(f'Unknown training method {name!r}; valid methods: {sorted(METHODS)}.')
  return METHODS[name]


__all__ = ['METHODS', 'Method', 'ObjectiveInputs', 'ParamsContext', 'base', 'get_method']
