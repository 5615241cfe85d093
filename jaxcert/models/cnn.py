"""The Small (3-layer) and Large (6-layer) CNNs of seed 001 (Kakizaki et al., Sec. 5.1.4).

Seed 001 gives their architectures in an appendix that our copy lacks; they are the IBP
architectures "small" and "large" of Gowal et al. 2018, "On the effectiveness of interval bound
propagation for training verifiably robust models" (Table 1 there), which C-IBP, a baseline of seed
001, comes from. Kernel sizes, strides and padding follow Gowal et al.'s released code
(deepmind/interval-bound-propagation, examples/train.py `layers()`): 'VALID' padding in Small,
'SAME' in Large. The classifier's final Dense(num_classes) becomes Dense(embedding_dim). Convolutions
are NHWC with biases; every activation is `nn.relu` (it lowers to `max`, which interval bound
propagation bounds exactly). Layer counts: Small has 2 conv + 1 hidden dense layers, Large has 5 conv
+ 1 hidden dense layers, each followed by the embedding layer.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxcert.models import base


class SmallCNN(base.Encoder):
  """Gowal et al.'s "small" network with an embedding head.

  Conv(16, 4x4, stride 2, VALID) -> ReLU -> Conv(32, 4x4, stride 1, VALID) -> ReLU -> flatten
  -> Dense(100) -> ReLU -> Dense(embedding_dim). The second convolution has stride 1, as in
  Gowal et al.'s Table 1 and code. On 28x28 images the feature maps are 13x13x16 and 10x10x32;
  images must be at least 10x10.
  """
  min_image_side = 10

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    del train  # No layer behaves differently in training.
    h = self.prepare(x)
    h = nn.relu(nn.Conv(16, (4, 4), strides=(2, 2), padding='VALID', name='conv1')(h))
    h = nn.relu(nn.Conv(32, (4, 4), strides=(1, 1), padding='VALID', name='conv2')(h))
    h = nn.relu(nn.Dense(100, name='dense1')(base.flatten(h)))
    return self.embed(h)


class LargeCNN(base.Encoder):
  """Gowal et al.'s "large" network with an embedding head.

  Conv(64, 3x3, 1) -> Conv(64, 3x3, 1) -> Conv(128, 3x3, 2) -> Conv(128, 3x3, 1)
  -> Conv(128, 3x3, 1) -> flatten -> Dense(512) -> Dense(embedding_dim), 'SAME' padding, ReLU after
  every layer but the last. On 28x28 images the feature maps are 28x28x64 (twice), then
  14x14x128 (three times).
  """
  _CONV_LAYERS = ((64, 1), (64, 1), (128, 2), (128, 1), (128, 1))  # (features, stride)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    del train  # No layer behaves differently in training.
    h = self.prepare(x)
    for index, (features, stride) in enumerate(self._CONV_LAYERS):
      h = nn.Conv(features, (3, 3), strides=(stride, stride), padding='SAME',
                  name=f'conv{index + 1}')(h)
      h = nn.relu(h)
    h = nn.relu(nn.Dense(512, name='dense1')(base.flatten(h)))
    return self.embed(h)
