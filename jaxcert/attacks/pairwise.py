"""The pairwise attack of the AckMetric slides (Huai et al.) and its bound for linear encoders.

The attack maximises D = ||f(x_i) - f(x_j)||^2 under ||d_i||_inf + ||d_j||_inf <= eps
(`pairwise_attack`, `linear_pairwise_attack`); `attack_success_rate` is its success rate at a
threshold gamma, and D(x_i + d, x_j) <= D + 2 d eps lambda_max is the bound for linear f = Wx
(`linear_pairwise_distance_bound`). `evaluate_linear_pairwise_attack` runs both on every pair of a
labelled set (scripts/ackmetric_spectral.py).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxcert import retrieval
from jaxcert.attacks import engine


def pair_squared_distances(embed: Callable, xi, xj) -> jax.Array:
  """D(x_i, x_j) = ||f(x_i) - f(x_j)||^2 per pair -> (B,) (AckMetric)."""
  return jnp.sum(jnp.square(embed(xi) - embed(xj)), axis=-1)


def _autodiff_pair_gradients(xi, xj, embed):
  return jax.grad(lambda a, b: jnp.sum(pair_squared_distances(embed, a, b)),
                  argnums=(0, 1))(xi, xj)


def _linear_pair_gradients(xi, xj, weight):
  """The slides' closed form: dD/dx_i = 2 W^T W (x_i - x_j) = -dD/dx_j."""
  diff = (xi - xj).reshape(xi.shape[0], -1)
  grad = (2 * (diff @ weight.T) @ weight).reshape(xi.shape)
  return grad, -grad


@functools.partial(jax.jit, static_argnames=('gradient_fn', 'clip'))
def _pairwise_step(xi_adv, xj_adv, xi, xj, eps, step_size, gradient_arg, *,
                   gradient_fn, clip):
  """One step of the AckMetric attack on the side with the larger gradient.

  The side k with the larger L1 gradient norm (the first-order gain of a
  sign step of length s is s ||g_k||_1) steps along sign(g_k) and is
  projected onto the L-inf ball of radius eps - ||delta_other||_inf around
  its clean point and onto `clip`, so ||delta_i||_inf + ||delta_j||_inf <= eps
  holds after every step. Ties step on x_i.
  """
  grad_i, grad_j = gradient_fn(xi_adv, xj_adv, gradient_arg)
  on_i = (jnp.sum(jnp.abs(grad_i), engine.example_axes(grad_i), keepdims=True) >=
          jnp.sum(jnp.abs(grad_j), engine.example_axes(grad_j), keepdims=True))
  budget_i = jnp.maximum(eps - engine.per_example_linf(xj_adv - xj), 0.)
  budget_j = jnp.maximum(eps - engine.per_example_linf(xi_adv - xi), 0.)
  xi_next = engine.project(xi_adv + step_size * jnp.sign(grad_i), xi, budget_i, clip=clip)
  xj_next = engine.project(xj_adv + step_size * jnp.sign(grad_j), xj, budget_j, clip=clip)
  return jnp.where(on_i, xi_next, xi_adv), jnp.where(on_i, xj_adv, xj_next)


def _pairwise_pgd(gradient_fn, gradient_arg, xi, xj, *, eps, step_size,
                  num_steps, clip):
  engine.check_nonnegative('eps', eps)
  engine.check_nonnegative('step_size', step_size)
  if jnp.shape(xi) != jnp.shape(xj):
    raise ValueError(f'xi and xj must have the same shape, got '
                     f'{jnp.shape(xi)} and {jnp.shape(xj)}.')
  clip = engine.check_clip(clip)
  xi_adv, xj_adv = xi, xj
  for _ in range(int(num_steps)):
    xi_adv, xj_adv = _pairwise_step(xi_adv, xj_adv, xi, xj, eps, step_size,
                                    gradient_arg, gradient_fn=gradient_fn,
                                    clip=clip)
  return xi_adv, xj_adv


def pairwise_attack(embed: Callable, xi, xj, *, eps, step_size,
                    num_steps: int,
                    clip: tuple[float, float] = (0., 1.)
                    ) -> tuple[jax.Array, jax.Array]:
  """AckMetric's attack: maximise D(x_i + d_i, x_j + d_j) over ||d_i||_inf + ||d_j||_inf <= eps.

  Projected sign-gradient ascent that, at every step, moves only the side
  whose gradient of D has the larger norm (slide "Projected gradient
  descent"; the norm is L1, the first-order gain of a sign step), with the
  joint budget enforced as in `_pairwise_step`. Both points stay in `clip`.
  The slides' strict budget (< eps) is taken as <= eps (same supremum).
  Starts at the clean pair.

  Args:
    embed: encoder `x -> (B, k)`.
    xi, xj: (B, ...) pairs in [0, 1].
    eps: joint L-inf budget (slides: 0.07, 0.09).
    step_size: sign-step length (the slides' xi).
    num_steps: number of steps.
    clip: (low, high) pixel range.

  Returns:
    (xi_adv, xj_adv).
  """
  return _pairwise_pgd(_autodiff_pair_gradients, retrieval.as_pytree_function(embed),
                       xi, xj, eps=eps, step_size=step_size,
                       num_steps=num_steps, clip=clip)


def linear_pairwise_attack(weight, xi, xj, *, eps, step_size, num_steps: int,
                           clip: tuple[float, float] = (0., 1.)
                           ) -> tuple[jax.Array, jax.Array]:
  """`pairwise_attack` for f(x) = W x with the slides' closed-form gradient.

  The slides' "explicit formula" is the gradient, not the maximiser:
  x_i <- clip(x_i + xi sign(2 W^T W (x_i - x_j))) and
  x_j <- clip(x_j + xi sign(-2 W^T W (x_i - x_j))). Maximising the convex
  quadratic D over the budget is a box-constrained convex maximisation (NP
  hard in general), so no closed-form maximiser is claimed. The two gradients
  are negatives of each other, so their norms tie (the slides: the formula
  "can be applied to arbitrary argument") and, ties going to x_i, every step
  moves x_i while x_j stays clean and x_i gets the whole budget. D depends on
  d_i - d_j only, so this loses nothing except where the box [0, 1] stops x_i
  and not x_j. `pairwise_attack` with embed = W x takes the same steps.

  Args:
    weight: W, (m, d) with d the number of input coordinates (a Flax Dense
      kernel is W^T). A bias cancels in D.
    xi, xj: (B, ...) pairs in [0, 1] with d coordinates per example.
    eps, step_size, num_steps, clip: as `pairwise_attack`.

  Returns:
    (xi_adv, xj_adv).
  """
  weight = jnp.asarray(weight)
  if weight.ndim != 2 or math.prod(jnp.shape(xi)[1:]) != weight.shape[1]:
    raise ValueError(f'weight must be (m, d) with d = '
                     f'{math.prod(jnp.shape(xi)[1:])} input coordinates, got '
                     f'{weight.shape}.')
  return _pairwise_pgd(_linear_pair_gradients, weight, xi, xj, eps=eps,
                       step_size=step_size, num_steps=num_steps, clip=clip)


def attack_success_rate(clean_distances, adversarial_distances, gamma: float,
                        mask=None) -> float:
  """Share of similar pairs (D <= gamma) that the attack makes dissimilar (D > gamma).

  AckMetric: x_i and x_j are judged similar iff D(x_i, x_j) <= gamma, and the
  attack maximises D - gamma. Pairs already dissimilar before the attack are
  not counted, nor pairs outside `mask` (e.g. pass same-class pairs only, so
  that only correct "similar" verdicts count). NaN when no pair is counted.
  """
  clean_distances = np.asarray(clean_distances)
  adversarial_distances = np.asarray(adversarial_distances)
  counted = clean_distances <= gamma
  if mask is not None:
    counted = counted & np.asarray(mask, bool)
  if not counted.any():
    return float('nan')
  return float(np.mean(adversarial_distances[counted] > gamma))


def linear_pairwise_distance_bound(weight, xi, xj, eps) -> jax.Array:
  """AckMetric's bound D(x_i + d_i, x_j + d_j) <= D(x_i, x_j) + 2 d eps lambda_max(W^T W).

  Sound for f(x) = W x whenever x_i, x_j and the perturbed points lie in
  [0, 1]^d and ||d_i||_inf + ||d_j||_inf <= eps (so it covers the slides'
  one-sided case d_j = 0 and the pairwise attack). Derivation (the slides
  reach the same form through a mean-value step): with A = W^T W,
  u = x_i - x_j and u' = u + d_i - d_j,

    D' - D = u'^T A u' - u^T A u = (u' - u)^T A (u' + u)
           <= lambda_max ||u' - u||_2 ||u' + u||_2
           <= lambda_max (sqrt(d) eps) (2 sqrt(d)) = 2 d eps lambda_max,

  using ||u' - u||_inf <= ||d_i||_inf + ||d_j||_inf <= eps, and u, u' in
  [-1, 1]^d because all four points lie in [0, 1]^d. The box is needed:
  without it (d = 1, W = 1, x_i = 1, x_j = 0, d_i = eps) D' = (1 + eps)^2
  exceeds 1 + 2 eps. Concrete inputs outside [0, 1] raise ValueError.

  Args:
    weight: W, (m, d) (a Flax Dense kernel is W^T).
    xi, xj: (B, ...) points in [0, 1] with d coordinates per example.
    eps: joint L-inf budget (>= 0).

  Returns:
    (B,) upper bounds on the perturbed squared distance.
  """
  weight = jnp.asarray(weight)
  if (weight.ndim != 2 or jnp.ndim(xi) < 2 or jnp.shape(xi) != jnp.shape(xj)
      or math.prod(jnp.shape(xi)[1:]) != weight.shape[1]):
    raise ValueError('weight must be (m, d) and xi, xj (B, ...) of equal shape '
                     f'with d coordinates per example; got W {weight.shape}, '
                     f'xi {jnp.shape(xi)}, xj {jnp.shape(xj)}.')
  engine.check_nonnegative('eps', eps)
  for name, x in (('xi', xi), ('xj', xj)):
    if not isinstance(x, jax.core.Tracer) and not (
        np.all(np.asarray(x) >= 0) and np.all(np.asarray(x) <= 1)):
      raise ValueError(f'{name} must lie in [0, 1]: the bound relies on the '
                       'pixel box.')
  num_inputs = weight.shape[1]
  diff = (jnp.reshape(xi, (-1, num_inputs)) -
          jnp.reshape(xj, (-1, num_inputs))) @ weight.T
  lambda_max = jnp.linalg.norm(weight, 2) ** 2
  return jnp.sum(jnp.square(diff), -1) + 2 * num_inputs * eps * lambda_max


def all_pairs(num: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices (i, j) of every pair i < j of `num` points, each (num (num - 1) / 2,)."""
  first, second = np.triu_indices(num, k=1)
  return first.astype(np.int32), second.astype(np.int32)


def evaluate_linear_pairwise_attack(weight, images, labels, *, eps, gamma: float,
                                    step_size=None, num_steps: int = 20,
                                    batch_size: int = 2048) -> dict:
  """AckMetric on every pair of a labelled set: the attack, its success rate, the bound checked.

  For f(x) = W x and every pair i < j: D = ||W (x_i - x_j)||^2 clean, D' after
  `linear_pairwise_attack` (budget ||d_i||_inf + ||d_j||_inf <= eps), and the
  certificate B = D + 2 d eps lambda_max(W^T W)
  (`linear_pairwise_distance_bound`). A pair with D' > B would prove the bound
  wrong; they are counted (`bound_violations`, expected 0) and the largest
  D' - B is reported. The success rate is `attack_success_rate` over
  same-class pairs judged similar (D <= gamma), and over all similar pairs; the certified rate is
  the share of those same-class similar pairs whose bound B <= gamma proves no attack in the
  budget can make them dissimilar.

  Args:
    weight: W, (m, d).
    images: (N, ...) points in [0, 1] with d coordinates each.
    labels: (N,) classes.
    eps: joint L-inf budget (slides: 0.07, 0.09).
    gamma: similarity threshold (slides: 2).
    step_size: sign-step length; default eps / 10.
    num_steps: attack steps.
    batch_size: pairs per attack call.

  Returns:
    {'num_pairs', 'num_similar_same_class', 'success_rate' (same-class
    similar pairs), 'success_rate_all_similar', 'certified_rate', 'bound_violations',
    'max_excess_over_bound' (max D' - B, <= 0 when sound), 'mean_bound_slack'
    (mean B - D'), 'lambda_max', 'clean_distances', 'adversarial_distances',
    'bounds' (the last three (num_pairs,) arrays)}.
  """
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels)
  weight = jnp.asarray(weight)
  step_size = eps / 10 if step_size is None else step_size
  first, second = all_pairs(len(labels))
  embed = lambda x: jnp.reshape(x, (x.shape[0], -1)) @ weight.T
  clean, adversarial, bounds = [], [], []
  for rows, count in retrieval.padded_batches(len(first), batch_size):
    xi, xj = jnp.asarray(images[first[rows]]), jnp.asarray(images[second[rows]])
    ai, aj = linear_pairwise_attack(weight, xi, xj, eps=eps, step_size=step_size,
                                    num_steps=num_steps)
    clean.append(np.asarray(pair_squared_distances(embed, xi, xj))[:count])
    adversarial.append(np.asarray(pair_squared_distances(embed, ai, aj))[:count])
    bounds.append(np.asarray(linear_pairwise_distance_bound(weight, xi, xj, eps))[:count])
  clean, adversarial, bounds = map(np.concatenate, (clean, adversarial, bounds))
  same_class = labels[first] == labels[second]
  similar = same_class & (clean <= gamma)
  excess = adversarial - bounds
  return {
      'num_pairs': int(len(first)),
      'num_similar_same_class': int(np.sum(similar)),
      'success_rate': attack_success_rate(clean, adversarial, gamma, same_class),
      'certified_rate': float(np.mean(bounds[similar] <= gamma)) if similar.any() else float('nan'),
      'success_rate_all_similar': attack_success_rate(clean, adversarial, gamma),
      'bound_violations': int(np.sum(excess > 0)),
      'max_excess_over_bound': float(np.max(excess)),
      'mean_bound_slack': float(np.mean(-excess)),
      'lambda_max': float(jnp.linalg.norm(weight, 2) ** 2),
      'clean_distances': clean,
      'adversarial_distances': adversarial,
      'bounds': bounds,
  }
