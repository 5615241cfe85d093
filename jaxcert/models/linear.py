"""The linear encoder f(x) = W x of AckMetric (slides after Huai et al., "For linear mapping (f(x) = Wx)").

The closed forms of AckMetric (the pairwise PGD step 2 W^T W (x_i - x_j) and the bound
D(x_i + delta, x_j) <= D + 2 d eps lambda_max(W^T W)) hold for this model with the default
`input_mean=0, input_std=1` and `l2_normalize=False`; other values make f affine or nonlinear.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxcert.models import base


class LinearEncoder(base.Encoder):
  """f(x) = W flatten(x): one Dense layer without bias, named 'embedding' (kernel = W^T)."""

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    del train  # No layer behaves differently in training.
    return self.embed(base.flatten(self.prepare(x)), use_bias=False)
