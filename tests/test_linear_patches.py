"""Tests of the patches pass of CROWN (jaxcert.bounds.linear_patches, docs/linear_bounds.md §5.1).

The patches pass must give the bounds of the dense backward pass (the same relaxations, only
carried on each neuron's receptive field), so the bounds of `linear_bounds(..., patches=True)`
must equal those of `patches=False` to rounding in float64, and the patches pass must actually
run (counted); and the final bounds must contain sampled points, box corners of a small input
and the ends of sign-gradient ascent toward every bound.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcert import models
from jaxcert.bounds import input_box
from jaxcert.bounds import interval
from jaxcert.bounds import linear
from jaxcert.bounds import linear_patches
from jaxcert.bounds.linear import linear_bounds

TOLERANCE_64 = 1e-10
NHWC = ('NHWC', 'HWIO', 'NHWC')


@pytest.fixture(autouse=True)
def _float64():
  with jax.enable_x64(True):
    yield


@pytest.fixture
def patch_calls(monkeypatch):
  """Counts the patches passes traced (one per tightened node) and forces small chunks."""
  calls = []
  original = linear_patches.patch_lower_bounds

  def counted(chain, node, flat_indices, *args):
    calls.append(node.shape)
    return original(chain, node, flat_indices, *args)

  monkeypatch.setattr(linear_patches, 'patch_lower_bounds', counted)
  monkeypatch.setattr(linear_patches, 'patch_budget', lambda batch: 3000)  # several chunks
  return calls


def _convnet(rng, pool: bool):
  """Normalisation, conv (stride 2, asymmetric padding) + bias + ReLU, conv (SAME) and conv
  (padded; two convolutions in a row, so coefficients on the padding must be dropped) with a
  BatchNorm-style scale/shift and tanh, optionally min pooling (an interval step, unlike max
  pooling: the next chain ends there), a third conv (stride 1, VALID) + ReLU, then dense."""
  k1 = rng.normal(size=(3, 3, 2, 5)) / 3
  b1 = rng.normal(size=5) * 0.1
  k2 = rng.normal(size=(2, 2, 5, 6)) / 4
  k2b = rng.normal(size=(2, 2, 6, 6)) / 4
  scale, shift = rng.uniform(0.5, 1.5, size=6), rng.normal(size=6) * 0.1
  k3 = rng.normal(size=(2, 2, 6, 4)) / 4
  dense = rng.normal(size=((3 * 2 if pool else 4 * 3) * 4, 3)) / 4

  def fn(x):
    h = (x - 0.3) / 0.7
    h = jax.lax.conv_general_dilated(h, k1, (2, 2), ((1, 2), (0, 1)), dimension_numbers=NHWC)
    h = jax.nn.relu(h + b1)
    h = jax.lax.conv_general_dilated(h, k2, (1, 1), 'SAME', dimension_numbers=NHWC)
    h = jax.lax.conv_general_dilated(h, k2b, (1, 1), ((1, 0), (0, 1)), dimension_numbers=NHWC)
    h = jnp.tanh(h * scale + shift)
    if pool:
      h = jax.lax.reduce_window(h, jnp.inf, jax.lax.min, (1, 2, 2, 1), (1, 1, 1, 1), 'VALID')
    h = jax.nn.relu(jax.lax.conv_general_dilated(h, k3, (1, 1), 'VALID',
                                                 dimension_numbers=NHWC))
    return h.reshape(h.shape[0], -1) @ dense

  return fn


@pytest.mark.parametrize('pool', [False, pytest.param(True, marks=pytest.mark.slow)],
                         ids=['to_input', 'to_interval_step'])
def test_patches_equal_dense_pass(patch_calls, pool):
  rng = np.random.default_rng(11)
  fn = _convnet(rng, pool)
  lower, upper = input_box(rng.uniform(size=(2, 8, 8, 2)), 0.08)
  patched = jax.jit(linear_bounds(fn, 'crown'))(lower, upper)
  # The inputs of the tanh, of the min pool if any, and of the last ReLU.
  assert len(patch_calls) == (3 if pool else 2)
  dense = jax.jit(linear_bounds(fn, 'crown', patches=False))(lower, upper)
  ibp_lower, ibp_upper = interval(fn)(lower, upper)
  for patched_bound, dense_bound in zip(patched, dense):
    np.testing.assert_allclose(patched_bound, dense_bound, rtol=1e-9, atol=1e-12)
  # Not vacuous: CROWN's intermediate bounds made the output bounds tighter than IBP's.
  assert np.mean(patched[1] - patched[0]) < 0.9 * np.mean(ibp_upper - ibp_lower)


def test_chunk_sizes_follow_the_batch_and_leave_the_bounds_alone(monkeypatch):
  """One example alone takes larger row chunks and patch budgets than one of a batch (a call's
  budget shared by its examples); its bounds are the same (float64)."""
  assert linear.row_chunk_for(1) > linear.row_chunk_for(40) == linear.DEFAULT_ROW_CHUNK
  assert linear_patches.patch_budget(1) > linear_patches.patch_budget(40)
  assert linear_patches.patch_budget(40) == linear_patches.MIN_PATCH_BUDGET
  assert linear_patches.patch_budget(1) <= linear_patches.MAX_PATCH_BUDGET
  # Budgets this small network exceeds, so that both calls take several passes of different sizes.
  monkeypatch.setattr(linear, 'ROWS_PER_CALL', 16)
  monkeypatch.setattr(linear_patches, 'MIN_PATCH_BUDGET', 600)
  monkeypatch.setattr(linear_patches, 'PATCH_ENTRIES_PER_CALL', 3000)
  assert (linear.row_chunk_for(1), linear.row_chunk_for(4)) == (16, 8)
  assert (linear_patches.patch_budget(1), linear_patches.patch_budget(4)) == (3000, 750)
  rng = np.random.default_rng(13)
  k1, k2 = rng.normal(size=(3, 3, 1, 4)) / 2, rng.normal(size=(2, 2, 4, 4)) / 2
  w1, w2 = rng.normal(size=(36, 10)) / 4, rng.normal(size=(10, 20)) / 3

  def fn(x):  # 36 neurons in patches (18 or all a pass); 10 and 20 rows (8 or 16 a pass)
    h = jax.nn.relu(jax.lax.conv_general_dilated(x, k1, (1, 1), 'VALID', dimension_numbers=NHWC))
    h = jax.nn.relu(jax.lax.conv_general_dilated(h, k2, (1, 1), 'VALID', dimension_numbers=NHWC))
    return jax.nn.relu(h.reshape(h.shape[0], -1) @ w1) @ w2

  lower, upper = input_box(rng.uniform(size=(4, 6, 6, 1)), 0.1)
  batched = jax.jit(linear_bounds(fn, 'crown'))(lower, upper)
  alone = jax.jit(linear_bounds(fn, 'crown'))(lower[:1], upper[:1])
  for bound_alone, bound_batched in zip(alone, batched):
    np.testing.assert_allclose(bound_alone, bound_batched[:1], rtol=1e-12, atol=1e-13)


def _pgd_ends(fn, lower, upper, num_outputs, steps=40):
  """Ends of projected sign-gradient ascent on +-fn(x)[:, i] from the centre and a corner."""
  step_size = (upper - lower) / 8

  def ascend(direction, start):
    objective = lambda x: jnp.sum(fn(x) @ direction)

    def step(_, x):
      return jnp.clip(x + step_size * jnp.sign(jax.grad(objective)(x)), lower, upper)

    return jax.lax.fori_loop(0, steps, step, start)

  directions = jnp.concatenate([jnp.eye(num_outputs), -jnp.eye(num_outputs)])
  starts = [(lower + upper) / 2, lower]
  return jnp.concatenate([jax.jit(jax.vmap(lambda d, s=s: ascend(d, s)))(directions)
                          for s in starts])


@pytest.mark.parametrize('pool', [pytest.param(False, marks=pytest.mark.slow), True],
                         ids=['to_input', 'to_interval_step'])
def test_patches_bounds_sound(patch_calls, pool):
  """Sampled points, PGD ends and (for a 2x2x1 corner of the input) box corners lie inside."""
  rng = np.random.default_rng(12)
  fn = _convnet(rng, pool)
  lower, upper = input_box(rng.uniform(size=(2, 8, 8, 2)), 0.08)
  out_lower, out_upper = jax.jit(linear_bounds(fn, 'crown'))(lower, upper)
  assert patch_calls
  uniform = rng.uniform(size=(300,) + lower.shape)
  corners = np.stack([np.where(np.array(bits).reshape(2, 2, 1), np.asarray(upper)[:, :2, :2, :1],
                               np.asarray(lower)[:, :2, :2, :1])
                      for bits in itertools.product([0, 1], repeat=4)])
  cornered = np.broadcast_to((np.asarray(lower) + np.asarray(upper)) / 2,
                             (16,) + lower.shape).copy()
  cornered[:, :, :2, :2, :1] = corners
  points = np.concatenate([np.asarray(lower)[None], np.asarray(upper)[None],
                           np.asarray(lower) + uniform * np.asarray(upper - lower), cornered,
                           np.asarray(_pgd_ends(fn, lower, upper, 3))])
  values = np.asarray(jax.jit(jax.vmap(fn))(jnp.asarray(points)))
  scale = 1 + np.abs(values)
  assert np.all(values >= np.asarray(out_lower)[None] - TOLERANCE_64 * scale)
  assert np.all(values <= np.asarray(out_upper)[None] + TOLERANCE_64 * scale)


@pytest.mark.slow
def test_small_cnn_patches_equal_dense_pass(patch_calls):
  """The Small CNN (flax, random weights): the patches pass bounds the second convolution."""
  model = models.get_model('small_cnn', embedding_dim=8)
  variables = models.init_variables(model, jax.random.key(1), (1, 28, 28, 1))
  variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
  fn = lambda x: model.apply(variables, x)
  images = np.random.default_rng(13).uniform(size=(2, 28, 28, 1))
  lower, upper = input_box(images, 0.002)
  patched = jax.jit(linear_bounds(fn, 'crown'))(lower, upper)
  assert patch_calls
  dense = jax.jit(linear_bounds(fn, 'crown', patches=False))(lower, upper)
  for patched_bound, dense_bound in zip(patched, dense):
    np.testing.assert_allclose(patched_bound, dense_bound, rtol=1e-9, atol=1e-12)
