"""ResNet-18 and ResNet-50 encoders (He et al. 2016, "Deep residual learning for image recognition").

RetrievalGuard (Sec. 4.3) embeds CUB, Cars and SOP with a ResNet-50 and a 128-d
L2-normalised head. The layout follows He et al. Table 1 (BasicBlock stages [2, 2, 2, 2] for
ResNet-18, Bottleneck stages [3, 4, 6, 3] for ResNet-50; the stride-2 convolution of a Bottleneck is
its 3x3 one, as in torchvision and the Flax ImageNet example), with
- the ImageNet stem (7x7 stride-2 convolution, 3x3 stride-2 max-pool) for images with a side of 64
  pixels or more, and for smaller images (CIFAR-10, MNIST) the stem of He et al. Sec. 4.2: one 3x3
  stride-1 convolution and no max-pool (`stem='auto'`; 'small' or 'imagenet' force one);
- BatchNorm (momentum 0.9, epsilon 1e-5) after every convolution, batch statistics when
  `train=True` and the running averages of the 'batch_stats' collection otherwise; the last
  BatchNorm of every residual branch starts with scale 0 (Goyal et al. 2017), so each block starts
  as the identity;
- global average pooling (`jnp.mean`), then Dense(embedding_dim) and the optional L2 head.
In evaluation mode every BatchNorm is an affine map with constant coefficients, so interval bound
propagation goes through it.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxcert.models import base

STEMS = ('auto', 'small', 'imagenet')
# Images with a side below this get the small-image stem under stem='auto'.
SMALL_IMAGE_SIDE = 64

_BATCH_NORM_MOMENTUM = 0.9
_BATCH_NORM_EPSILON = 1e-5


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with a residual connection (He et al. Fig. 2); output width `filters`."""
  filters: int
  strides: int
  norm: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False)
    h = conv(self.filters, (3, 3), strides=self.strides, name='conv1')(x)
    h = nn.relu(self.norm(name='norm1')(h))
    h = conv(self.filters, (3, 3), name='conv2')(h)
    h = self.norm(name='norm2', scale_init=nn.initializers.zeros)(h)
    return nn.relu(h + _shortcut(x, h.shape[-1], self.strides, self.norm))


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (strided), 1x1 expand to 4 * `filters`, residual (He et al. Fig. 5)."""
  filters: int
  strides: int
  norm: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False)
    h = conv(self.filters, (1, 1), name='conv1')(x)
    h = nn.relu(self.norm(name='norm1')(h))
    h = conv(self.filters, (3, 3), strides=self.strides, name='conv2')(h)
    h = nn.relu(self.norm(name='norm2')(h))
    h = conv(4 * self.filters, (1, 1), name='conv3')(h)
    h = self.norm(name='norm3', scale_init=nn.initializers.zeros)(h)
    return nn.relu(h + _shortcut(x, h.shape[-1], self.strides, self.norm))


def _shortcut(x: jax.Array, features: int, strides: int, norm) -> jax.Array:
  """Identity, or a strided 1x1 projection with BatchNorm when the shape changes (He et al. option B).

  Called inside a block's compact `__call__`, so the projection's layers belong to that block.
  """
  if x.shape[-1] == features and strides == 1:
    return x
  x = nn.Conv(features, (1, 1), strides=strides, use_bias=False, name='projection_conv')(x)
  return norm(name='projection_norm')(x)


_ARCHITECTURES = {
    18: ((2, 2, 2, 2), BasicBlock),
    50: ((3, 4, 6, 3), Bottleneck),
}
DEPTHS = tuple(_ARCHITECTURES)


class ResNet(base.Encoder):
  """ResNet encoder, `depth` 18 or 50 (module docstring).

  Attributes:
    depth: 18 (BasicBlock [2, 2, 2, 2]) or 50 (Bottleneck [3, 4, 6, 3]).
    num_filters: width of the stem and the first stage; stage i has num_filters * 2^i.
    stem: 'auto' (small-image stem below 64 pixels, ImageNet stem otherwise), 'small' or 'imagenet'.
  """
  depth: int = 50
  num_filters: int = 64
  stem: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    if self.depth not in _ARCHITECTURES:
      raise ValueError(f'ResNet depth must be one of {DEPTHS}, got {self.depth}.')
    if self.stem not in STEMS:
      raise ValueError(f'Unknown ResNet stem {self.stem!r}; valid stems: {STEMS}.')
    stage_sizes, block = _ARCHITECTURES[self.depth]
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=_BATCH_NORM_MOMENTUM, epsilon=_BATCH_NORM_EPSILON)
    h = self.prepare(x)
    if self.uses_small_image_stem(x.shape):
      h = nn.Conv(self.num_filters, (3, 3), use_bias=False, name='stem_conv')(h)
      h = nn.relu(norm(name='stem_norm')(h))
    else:
      h = nn.Conv(self.num_filters, (7, 7), strides=2, padding=((3, 3), (3, 3)), use_bias=False,
                  name='stem_conv')(h)
      h = nn.relu(norm(name='stem_norm')(h))
      h = nn.max_pool(h, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for stage, num_blocks in enumerate(stage_sizes):
      for index in range(num_blocks):
        strides = 2 if stage > 0 and index == 0 else 1
        h = block(self.num_filters * 2**stage, strides, norm,
                  name=f'stage{stage + 1}_block{index + 1}')(h)
    return self.embed(jnp.mean(h, axis=(1, 2)))

  def uses_small_image_stem(self, image_shape: tuple[int, ...]) -> bool:
    """Whether images of NHWC `image_shape` go through the small-image stem."""
    if self.stem == 'auto':
      return min(image_shape[1], image_shape[2]) < SMALL_IMAGE_SIDE
    return self.stem == 'small'
