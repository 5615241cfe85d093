"""The Small (3-layer) and Large (6-layer) CNNs of Kakizaki et al. (Sec. 5.1.4).

Kakizaki et al. gives their architectures in an appendix that our copy lacks; they are the IBP
architectures "small" and "large" of Gowal et al. 2018, "On the effectiveness of interval bound
propagation for training verifiably robust models" (Table 1 there), which C-IBP, a baseline of seed
001, comes from. Kernel sizes, strides and padding follow Gowal et al.'s released code
(deepmind/interval-bound-propagation, examples/train.py `layers()`): 'VALID' padding in Small,
'SAME' in Large. The classifier's final Dense(num_classes) becomes Dense(embedding_dim). Convolutions
are NHWC with biases; every activation is `nn.relu` (it lowers to `max`, which interval bound
propagation bounds exactly). Layer counts: Small has 2 conv + 1 hidden dense layers, Large has 5 conv
+ 1 hidden dense layers, each followed by the embedding layer.

Two options of both CNNs serve fast certified training (Shi et al. 2021, "Fast Certified Robust
Training with Short Warmup", Sec. 3-4):

* `ibp_init`: every hidden layer's kernel drawn from N(0, 2 pi / n_in^2), n_in its fan-in
  (kernel height x width x input channels, or input features), biases 0; the embedding layer keeps
  the default LeCun-normal initialisation (Shi et al. Eq. 7 and their `ibp_init`, which leaves the
  last layer alone). With it the expected interval width neither explodes nor vanishes through
  depth at initialisation (Shi et al. Theorem 1), where the default initialisation multiplies it
  by about sqrt(n_in) per layer.
* `batch_norm`: a BatchNorm after every hidden layer's affine map, before its ReLU (Shi et al.
  Sec. 4.2), momentum `batch_norm_momentum`, epsilon 1e-5; batch statistics when `train=True` and
  the running averages of the 'batch_stats' collection otherwise. In inference mode each BatchNorm
  is an affine map with constant coefficients, so certificates (which take the encoder in
  inference mode) propagate intervals through it exactly.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcert.models import base

BATCH_NORM_EPSILON = 1e-5
PREACTIVATIONS = 'preactivations'  # the name the hidden ReLUs' inputs are sown under


def ibp_initializer(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
  """Kernel init N(0, 2 pi / n_in^2) of Shi et al. 2021 (Eq. 7), n_in = prod(shape[:-1]).

  Flax kernels are (in_features, out) for Dense and (height, width, in_channels, out) for Conv, so
  the fan-in is the product of all axes but the last.
  """
  fan_in = math.prod(shape[:-1])
  return math.sqrt(2 * math.pi) / fan_in * jax.random.normal(key, shape, dtype)


class _HiddenLayers(base.Encoder):
  """The options every CNN here shares: IBP initialisation and BatchNorm (module docstring)."""
  batch_norm: bool = False
  batch_norm_momentum: float = 0.9
  ibp_init: bool = False

  def kernel_init(self):
    return ibp_initializer if self.ibp_init else nn.linear.default_kernel_init

  def activate(self, h: jax.Array, name: str, train: bool) -> jax.Array:
    """ReLU of the layer output `h`, after BatchNorm `name` when `batch_norm` is on.

    The ReLU's input is sown into the 'intermediates' collection as `preactivations` (a no-op
    unless that collection is mutable): certified training's warm-up regularisers bound it
    (`jaxcert.objectives.certified.warmup_regularizers`).
    """
    if self.batch_norm:
      h = nn.BatchNorm(use_running_average=not train, momentum=self.batch_norm_momentum,
                       epsilon=BATCH_NORM_EPSILON, name=name)(h)
    self.sow('intermediates', PREACTIVATIONS, h)
    return nn.relu(h)


class SmallCNN(_HiddenLayers):
  """Gowal et al.'s "small" network with an embedding head.

  Conv(16, 4x4, stride 2, VALID) -> ReLU -> Conv(32, 4x4, stride 1, VALID) -> ReLU -> flatten
  -> Dense(100) -> ReLU -> Dense(embedding_dim). The second convolution has stride 1, as in
  Gowal et al.'s Table 1 and code. On 28x28 images the feature maps are 13x13x16 and 10x10x32;
  images must be at least 10x10.
  """
  min_image_side = 10

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    init = self.kernel_init()
    h = self.prepare(x)
    h = nn.Conv(16, (4, 4), strides=(2, 2), padding='VALID', kernel_init=init, name='conv1')(h)
    h = self.activate(h, 'norm1', train)
    h = nn.Conv(32, (4, 4), strides=(1, 1), padding='VALID', kernel_init=init, name='conv2')(h)
    h = self.activate(h, 'norm2', train)
    h = self.activate(nn.Dense(100, kernel_init=init, name='dense1')(base.flatten(h)), 'norm3',
                      train)
    return self.embed(h)


class LargeCNN(_HiddenLayers):
  """Gowal et al.'s "large" network with an embedding head.

  Conv(64, 3x3, 1) -> Conv(64, 3x3, 1) -> Conv(128, 3x3, 2) -> Conv(128, 3x3, 1)
  -> Conv(128, 3x3, 1) -> flatten -> Dense(512) -> Dense(embedding_dim), 'SAME' padding, ReLU after
  every layer but the last. On 28x28 images the feature maps are 28x28x64 (twice), then
  14x14x128 (three times).
  """
  _CONV_LAYERS = ((64, 1), (64, 1), (128, 2), (128, 1), (128, 1))  # (features, stride)

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    init = self.kernel_init()
    h = self.prepare(x)
    for index, (features, stride) in enumerate(self._CONV_LAYERS):
      h = nn.Conv(features, (3, 3), strides=(stride, stride), padding='SAME', kernel_init=init,
                  name=f'conv{index + 1}')(h)
      h = self.activate(h, f'norm{index + 1}', train)
    h = nn.Dense(512, kernel_init=init, name='dense1')(base.flatten(h))
    h = self.activate(h, f'norm{len(self._CONV_LAYERS) + 1}', train)
    return self.embed(h)
