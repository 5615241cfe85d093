"""Adversarial attacks on embedding models.

* `jaxcert.attacks.engine`: one projected-gradient engine, `pgd(loss_fn, ...)`, turns a per-example
  loss into an attack `attack(key, x, *loss_args) -> x_adv` over an L-infinity or L2 ball around `x`
  intersected with the pixel box [0, 1]; `fgsm` is its one-step case, `carlini_wagner_linf` the
  tau-penalised Adam attack of Carlini & Wagner, `get_attack` picks one by name.
* `jaxcert.attacks.ranking`: the query and candidate attacks of Kakizaki et al. (Eqs. 2 and 4) and
  the nearest-neighbour attack of Panum et al. (Algorithm 1).
* `jaxcert.attacks.pairwise`: the pairwise attack of the AckMetric slides (Huai et al.) and its
  bound for linear encoders.
* `jaxcert.attacks.smoothed`: PGD on a Gaussian-smoothed retrieval model, the empirical check of
  RetrievalGuard's certificates (Wu et al.).

The metrics measured under these attacks (ER-Recall@K, R@1 and mAP@R under attack) are computed
by `jaxcert.evaluation.attack`. The public functions of the modules are re-exported here:
`attacks.pgd(...)`, `attacks.query_attack(...)`.
"""

from jaxcert.attacks.engine import ATTACK_METHODS
from jaxcert.attacks.engine import Attack
from jaxcert.attacks.engine import carlini_wagner_linf
from jaxcert.attacks.engine import fgsm
from jaxcert.attacks.engine import get_attack
from jaxcert.attacks.engine import LOOPS
from jaxcert.attacks.engine import LossFn
from jaxcert.attacks.engine import NORMS
from jaxcert.attacks.engine import paired_distances
from jaxcert.attacks.engine import pgd
from jaxcert.attacks.engine import project
from jaxcert.attacks.engine import resolve_loop
from jaxcert.attacks.engine import sample_in_ball
from jaxcert.attacks.engine import squared_embedding_distance
from jaxcert.attacks.pairwise import all_pairs
from jaxcert.attacks.pairwise import attack_success_rate
from jaxcert.attacks.pairwise import evaluate_linear_pairwise_attack
from jaxcert.attacks.pairwise import linear_pairwise_attack
from jaxcert.attacks.pairwise import linear_pairwise_distance_bound
from jaxcert.attacks.pairwise import pair_squared_distances
from jaxcert.attacks.pairwise import pairwise_attack
from jaxcert.attacks.ranking import candidate_attack
from jaxcert.attacks.ranking import candidate_attack_objective
from jaxcert.attacks.ranking import nearest_neighbor_attack
from jaxcert.attacks.ranking import query_attack
from jaxcert.attacks.ranking import query_attack_objective
from jaxcert.attacks.smoothed import attack_smoothed_retrieval
from jaxcert.attacks.smoothed import common_noise_margin
from jaxcert.attacks.smoothed import plug_in_margin
from jaxcert.attacks.smoothed import retrieval_masks

__all__ = [
    'ATTACK_METHODS', 'Attack', 'LOOPS', 'LossFn', 'NORMS', 'all_pairs',
    'attack_smoothed_retrieval', 'attack_success_rate', 'candidate_attack', 'candidate_attack_objective', 'carlini_wagner_linf',
    'common_noise_margin', 'evaluate_linear_pairwise_attack', 'fgsm', 'get_attack',
    'linear_pairwise_attack', 'linear_pairwise_distance_bound', 'nearest_neighbor_attack',
    'pair_squared_distances', 'paired_distances', 'pairwise_attack', 'pgd', 'plug_in_margin',
    'project', 'query_attack', 'query_attack_objective', 'resolve_loop', 'retrieval_masks',
    'sample_in_ball', 'squared_embedding_distance',
]
