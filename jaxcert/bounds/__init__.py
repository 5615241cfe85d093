"""Sound interval bounds of JAX functions (seed 001, Sec. 3.2).

`interval(fn)` interprets the jaxpr of `fn` with the rules of
`jaxcert.bounds.rules`; `input_box` builds the L-infinity box of an image;
`l2_normalize` is an L2 normalisation with a tight interval rule.
"""

from jaxcert.bounds.interval import input_box
from jaxcert.bounds.interval import interval
from jaxcert.bounds.interval import IntervalBound
from jaxcert.bounds.rules import l2_normalize
from jaxcert.bounds.rules import l2_normalize_bounds
from jaxcert.bounds.rules import RULES

__all__ = [
    'IntervalBound',
    'RULES',
    'input_box',
    'interval',
    'l2_normalize',
    'l2_normalize_bounds',
]
