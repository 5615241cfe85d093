"""Sound bounds of JAX functions and certified retrieval (Kakizaki et al., Sec. 3.2).

`interval(fn)` interprets the jaxpr of `fn` with the rules of
`jaxcert.bounds.rules`; `input_box` builds the L-infinity box of an image;
`l2_normalize` is an L2 normalisation with a tight interval rule;
`interval(fn, rounding='outward')` bounds the real-valued function in any dtype
(`jaxcert.bounds.rounding`); `linear_bounds(fn, method)` computes CROWN-IBP,
CROWN or alpha-CROWN bounds over the same jaxpr, intersected with IBP
(`jaxcert.bounds.linear`).
`jaxcert.bounds.retrieval` turns embedding bounds into distance bounds, rank
bounds and certified retrieval (Kakizaki et al., Theorems 1-6, Eqs. 19 and 25).
"""

from jaxcert.bounds.interval import input_box
from jaxcert.bounds.interval import interval
from jaxcert.bounds.interval import IntervalBound
from jaxcert.bounds.linear import linear_bounds
from jaxcert.bounds.linear import linear_spec_bounds
from jaxcert.bounds.linear import linear_spec_lower_bounds
from jaxcert.bounds.l2_normalize import l2_normalize
from jaxcert.bounds.l2_normalize import l2_normalize_bounds
from jaxcert.bounds.rules import RULES
from jaxcert.bounds import rounding  # fills the outward (rigorous) rule tables
from jaxcert.bounds.retrieval import certified_retrieval
from jaxcert.bounds.retrieval import cr_recall_at_k
from jaxcert.bounds.retrieval import distance_bounds
from jaxcert.bounds.retrieval import embedding_bounds
from jaxcert.bounds.retrieval import rank_bounds
from jaxcert.bounds.retrieval import RankBounds

__all__ = [
    'IntervalBound',
    'RULES',
    'RankBounds',
    'certified_retrieval',
    'cr_recall_at_k',
    'distance_bounds',
    'embedding_bounds',
    'input_box',
    'interval',
    'l2_normalize',
    'linear_bounds',
    'linear_spec_bounds',
    'linear_spec_lower_bounds',
    'l2_normalize_bounds',
    'rank_bounds',
]
