"""A multi-layer perceptron encoder: flatten, ReLU hidden layers, Dense to the embedding."""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxcert.models import base


class MLPEncoder(base.Encoder):
  """flatten -> [Dense(hidden_width) -> ReLU] x num_hidden_layers -> Dense(embedding_dim).

  Attributes:
    hidden_width: units of each hidden layer.
    num_hidden_layers: how many hidden layers.
  """
  hidden_width: int = 512
  num_hidden_layers: int = 2

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    del train  # No layer behaves differently in training.
    h = base.flatten(self.prepare(x))
    for layer in range(self.num_hidden_layers):
      h = nn.relu(nn.Dense(self.hidden_width, name=f'hidden{layer + 1}')(h))
    return self.embed(h)
