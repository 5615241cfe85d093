"""Empirical defences as training methods: Panum et al. adversarial training, ACT, AckMetric's spectral loss.

  adversarial  Panum et al. Sec. 3.5 (Panum et al.): each anchor's positive is replaced, with probability
               P(gamma = 1) (`config.adversarial.attack_rate`), by the PGD perturbation rho^(2,1)
               that pushes it away from its anchor (Eq. 14); negatives are never perturbed.
  act          anti-collapse triplet (Zhou et al. 2021, "Adversarial attack and defense in deep
               ranking", the Kakizaki et al. baseline; recipe of robrank's `pnp_training_step`): PGD pulls
               each triplet's positive and negative together, the triplet loss pushes them apart.
  spectral     AckMetric (slides after Huai et al., "Proposed defence method"): the pairwise margin loss
               L1 plus sum_j alpha_j lambda_{d-k+j}(W^T W) for a linear encoder f = W x.

Tuples (Panum et al. App. A): every batch item is an anchor with one positive (another item of its
class, uniformly) and one negative (another class: distance-weighted as Panum et al., or uniformly as
robrank's 'spc2-random' miner), so B triplets, or 2B pairs for the contrastive loss. Anchors without
a positive or a negative in the batch are masked out (the m-per-class sampler always has both).

The inner maximisations run `jaxcert.attacks` inside the jitted train step on the encoder in
inference mode with its current weights behind `lax.stop_gradient`, and the adversarial images are
themselves stopped: the outer gradient is taken at the adversarial points, never through the attack
(Danskin's theorem, as in Madry et al. 2018).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxcert import attacks
from jaxcert import losses
from jaxcert import models
from jaxcert import retrieval
from jaxcert.objectives import base

NEGATIVE_SAMPLERS = ('distance_weighted', 'random')
TUPLE_LOSSES = ('triplet', 'contrastive')


# ---------------------------------------------------------------------------
# Tuples and their losses.
# ---------------------------------------------------------------------------


def _categorical_where(key, mask) -> jax.Array:
  """One index per row, uniform over the row's True entries (any index for an all-False row)."""
  logits = jnp.where(mask, 0.0, -jnp.inf)
  logits = jnp.where(jnp.any(mask, axis=1, keepdims=True), logits, 0.0)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def sample_tuples(key, labels, embeddings=None, *, negatives: str = 'random'):
  """One positive and one negative per anchor (Panum et al. App. A: the triplet set is the batch).

  Args:
    key: a `jax.random.key`.
    labels: (B,) classes.
    embeddings: (B, k) clean embeddings; needed for `negatives='distance_weighted'`.
    negatives: 'random' (uniform over other classes) or 'distance_weighted'
      (`losses.distance_weighted_negatives`, Wu et al. 2017, as Panum et al. App. A).

  Returns:
    (positive, negative, valid): (B,) int32 indices into the batch and (B,) bool, whether the
    anchor has both a positive and a negative.
  """
  if negatives not in NEGATIVE_SAMPLERS:
    raise ValueError(f'Unknown negative sampler {negatives!r}; valid: {list(NEGATIVE_SAMPLERS)}.')
  positive_key, negative_key = jax.random.split(key)
  same = labels[:, None] == labels[None, :]
  positive_mask = same & ~jnp.eye(labels.shape[0], dtype=bool)
  positive = _categorical_where(positive_key, positive_mask)
  if negatives == 'random':
    negative = _categorical_where(negative_key, ~same)
  else:
    drawn, _ = losses.distance_weighted_negatives(embeddings, labels, negative_key)
    negative = jnp.take_along_axis(drawn, positive[:, None], axis=1)[:, 0]
  valid = jnp.any(positive_mask, axis=1) & jnp.any(~same, axis=1)
  return positive, negative, valid


def _masked_mean(terms, mask) -> jax.Array:
  return jnp.sum(jnp.where(mask, terms, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def tuple_loss(loss_config, anchor, positive, negative, valid) -> jax.Array:
  """The metric loss of Panum et al. Sec. 3.1 on B explicit (anchor, positive, negative) tuples.

  triplet:      mean over valid anchors of [d(a, p) - d(a, n) + margin]_+ (`loss.margin`;
                Panum et al.: 0.2, Kakizaki et al.: 1.0).
  contrastive:  mean over the 2B pairs (a, p), (a, n) of [d(a, p) - pos_margin]_+ and
                [neg_margin - d(a, n)]_+ (Panum et al.: pos_margin 0, alpha = neg_margin = 1.0).

  d is the Euclidean distance of the embeddings.
  """
  if loss_config.name not in TUPLE_LOSSES:
    raise ValueError(f'The adversarial and act methods train on tuples with loss.name in '
                     f'{list(TUPLE_LOSSES)}, got {loss_config.name!r}.')
  if loss_config.name == 'triplet':
    return _masked_mean(losses.triplet_loss_explicit(anchor, positive, negative,
                                                     margin=loss_config.margin), valid)
  positive_term = jax.nn.relu(attacks.paired_distances(anchor, positive)
                              - loss_config.get('pos_margin', 0.0))
  negative_term = jax.nn.relu(loss_config.get('neg_margin', 1.0)
                              - attacks.paired_distances(anchor, negative))
  return _masked_mean(positive_term + negative_term, valid) / 2


def _frozen_encoder(inputs: base.ObjectiveInputs) -> jax.tree_util.Partial:
  """The encoder in inference mode with the current weights as constants of the outer gradient."""
  variables = lax.stop_gradient(base.model_variables(inputs.params['model'], inputs.batch_stats))
  return jax.tree_util.Partial(inputs.model.apply, variables)


def _rows_where(condition, a, b) -> jax.Array:
  """`a[i]` where `condition[i]`, else `b[i]`, for (B, ...) image batches."""
  return jnp.where(condition.reshape((-1,) + (1,) * (a.ndim - 1)), a, b)


def _per_example_linf(delta) -> jax.Array:
  return jnp.max(jnp.abs(delta.reshape(delta.shape[0], -1)), axis=1)


def _check_range(name: str, value, low: float, high: float) -> None:
  if not low <= value <= high:
    raise ValueError(f'{name} must be in [{low}, {high}], got {value}.')


# ---------------------------------------------------------------------------
# Panum et al.: adversarial training on perturbed positives.
# ---------------------------------------------------------------------------


def adversarial_objective(inputs: base.ObjectiveInputs):
  """Panum et al.'s robust objective: l(theta, x_1, x_2 + gamma rho^(2,1), x_3), gamma ~ Bernoulli(P).

  rho^(2,1) = argmax_{||d|| <= eps} d_theta(x_2 + d, x_1) (Eq. 14 for a positive x_2 of anchor x_1)
  by PGD with `config.adversarial.num_steps` iterations of step 2 eps / num_steps and a random
  start (Panum et al. Sec. 4.1: 5 iterations, eps = 0.01 under L-inf). P(gamma = 1) is
  `config.adversarial.attack_rate` (App. C: 0.1, 0.25, 0.5, 0.75, 1.0); 0 is natural training on
  the same tuples. Logged: `attacked_fraction` (share of anchors whose positive was replaced) and
  `perturbation_linf` (mean ||d||_inf of the replaced positives).
  """
  settings = inputs.config.adversarial
  _check_range('adversarial.attack_rate', settings.attack_rate, 0.0, 1.0)
  _check_range('adversarial.eps', settings.eps, 0.0, 1.0)
  tuple_key, attack_key, gamma_key = jax.random.split(inputs.key, 3)
  frozen = _frozen_encoder(inputs)
  clean_emb = frozen(inputs.images)
  positive, negative, valid = sample_tuples(tuple_key, inputs.labels, clean_emb,
                                            negatives=settings.negatives)
  clean_positives = inputs.images[positive]
  attack = attacks.get_attack('pgd', attacks.squared_embedding_distance, eps=settings.eps,
                              num_steps=settings.num_steps, norm=settings.norm)
  perturbed = lax.stop_gradient(attack(attack_key, clean_positives, frozen, clean_emb))
  attacked = jax.random.bernoulli(gamma_key, settings.attack_rate, valid.shape) & valid
  positives = _rows_where(attacked, perturbed, clean_positives)
  embeddings, batch_stats = base.embed_for_training(
      inputs.model, inputs.params, inputs.batch_stats,
      jnp.concatenate([inputs.images, positives]))
  anchor_emb, positive_emb = jnp.split(embeddings, 2)
  loss = tuple_loss(inputs.config.loss, anchor_emb, positive_emb, anchor_emb[negative], valid)
  logged = {'attacked_fraction': jnp.mean(attacked),
            'perturbation_linf': _masked_mean(_per_example_linf(positives - clean_positives),
                                              attacked)}
  return loss, (logged, batch_stats)


# ---------------------------------------------------------------------------
# ACT: anti-collapse triplet.
# ---------------------------------------------------------------------------


def collapse_loss(x, embed) -> jax.Array:
  """-||f(p_b) - f(n_b)|| for x = [positives; negatives] (2B rows) -> (B,).

  Maximised by `attacks.pgd`, it pulls every positive and its negative together in the embedding
  space: robrank's `pncollapse` (it descends the mean distance with sign steps).
  """
  embeddings = embed(x)
  half = x.shape[0] // 2
  return -attacks.paired_distances(embeddings[:half], embeddings[half:])


def act_objective(inputs: base.ObjectiveInputs):
  """ACT: the triplet loss T(f(a), f(p'), f(n')) on collapsed positives and negatives.

  (p', n') = argmin_{||p' - p||_inf, ||n' - n||_inf <= eps} d(f(p'), f(n')) by sign-gradient PGD
  from the clean points (`config.act`: eps, step_size, num_steps; robrank's 28x28 defaults are
  77/255, 3/255 and 32), with the anchor clean; triplets are (anchor, random positive, random
  negative) as robrank's 'spc2-random' miner. Zhou et al.'s reading: the attack collapses p and n,
  the triplet loss separates them again, so an attacker can no longer collapse them. Logged:
  `collapsed_distance` (mean training-mode d(f(p'), f(n'))) and `perturbation_linf`.
  """
  settings = inputs.config.act
  if inputs.config.loss.name != 'triplet':
    raise ValueError(f"method 'act' trains the triplet loss; set loss.name='triplet', got "
                     f'{inputs.config.loss.name!r}.')
  _check_range('act.eps', settings.eps, 0.0, 1.0)
  positive, negative, valid = sample_tuples(inputs.key, inputs.labels, negatives='random')
  pairs = jnp.concatenate([inputs.images[positive], inputs.images[negative]])
  attack = attacks.pgd(collapse_loss, eps=settings.eps, step_size=settings.step_size,
                       num_steps=settings.num_steps, random_start=False)
  collapsed = lax.stop_gradient(attack(None, pairs, _frozen_encoder(inputs)))
  embeddings, batch_stats = base.embed_for_training(
      inputs.model, inputs.params, inputs.batch_stats,
      jnp.concatenate([inputs.images, collapsed]))
  anchor_emb, positive_emb, negative_emb = jnp.split(embeddings, 3)
  loss = tuple_loss(inputs.config.loss, anchor_emb, positive_emb, negative_emb, valid)
  logged = {'collapsed_distance': _masked_mean(
                attacks.paired_distances(positive_emb, negative_emb), valid),
            'perturbation_linf': jnp.mean(_per_example_linf(collapsed - pairs))}
  return loss, (logged, batch_stats)


# ---------------------------------------------------------------------------
# AckMetric: margin loss and spectral penalty for f = W x.
# ---------------------------------------------------------------------------


def pairwise_margin_loss(embeddings, labels, *, gamma: float) -> jax.Array:
  """AckMetric's L1 = 2 / (N (N - 1)) sum_{i<j} (1 + y_ij (D(x_i, x_j) - gamma))_+.

  y_ij = +1 for pairs of one class and -1 otherwise (y_i y_j for y in {-1, 1}), D the squared
  Euclidean distance of the embeddings: similar pairs are pushed below gamma - 1, dissimilar ones
  above gamma + 1.
  """
  distances = retrieval.pairwise_sq_distances(embeddings, embeddings)
  sign = jnp.where(labels[:, None] == labels[None, :], 1.0, -1.0)
  hinge = jax.nn.relu(1.0 + sign * (distances - gamma))
  upper = jnp.triu(jnp.ones(hinge.shape, bool), k=1)
  return _masked_mean(hinge, upper)


def linear_encoder_weight(model, model_params) -> jax.Array:
  """W (m, d) of a linear encoder f(x) = W x (`models.LinearEncoder`, kernel = W^T).

  Raises:
    ValueError: the encoder is not f(x) = W x (another model, an L2 head, or input normalisation),
      so AckMetric's spectral closed forms do not apply.
  """
  if (not isinstance(model, models.LinearEncoder) or model.l2_normalize
      or model.input_mean != 0.0 or model.input_std != 1.0):
    raise ValueError("AckMetric's spectral defence and bound need f(x) = W x: model.name='linear' "
                     'with l2_normalize=False, input_mean=0 and input_std=1.')
  return model_params['embedding']['kernel'].T


def top_eigenvalues(weight, k: int) -> jax.Array:
  """The k largest eigenvalues of W^T W in ascending order, lambda_{d-k+1} <= ... <= lambda_d.

  They are the squared singular values of W (W^T W and W W^T share their nonzero spectrum), so
  the m x m matrix W W^T is decomposed instead of the d x d one; k <= m.
  """
  if not 1 <= k <= weight.shape[0]:
    raise ValueError(f'k must be in [1, {weight.shape[0]}] (the embedding size), got {k}.')
  return jnp.linalg.eigvalsh(jnp.matmul(weight, weight.T, precision=lax.Precision.HIGHEST))[-k:]


def spectral_penalty(weight, alphas) -> jax.Array:
  """AckMetric's sum_{j=1}^k alpha_j lambda_{d-k+j}(W^T W): alphas[-1] weights lambda_max."""
  alphas = jnp.asarray(alphas, jnp.float32)
  return jnp.sum(alphas * top_eigenvalues(weight, alphas.shape[0]))


def spectral_objective(inputs: base.ObjectiveInputs):
  """AckMetric's L2 = L1 + sum_j alpha_j lambda_{d-k+j}(W^T W) (L1 alone when alphas is empty).

  `config.spectral`: gamma (slides: 2) and alphas. Shrinking the top of the spectrum shrinks the
  certified slack 2 d eps lambda_max of `attacks.linear_pairwise_distance_bound`. Logged:
  `margin_loss` and `lambda_max`.
  """
  settings = inputs.config.spectral
  weight = linear_encoder_weight(inputs.model, inputs.params['model'])
  embeddings, batch_stats = base.embed_for_training(inputs.model, inputs.params,
                                                    inputs.batch_stats, inputs.images)
  margin = pairwise_margin_loss(embeddings, inputs.labels, gamma=settings.gamma)
  alphas = tuple(settings.alphas)
  if any(alpha < 0 for alpha in alphas):
    raise ValueError(f'spectral.alphas must be >= 0, got {alphas}.')
  penalty = spectral_penalty(weight, alphas) if alphas else 0.0
  logged = {'margin_loss': margin, 'lambda_max': top_eigenvalues(weight, 1)[0]}
  return margin + penalty, (logged, batch_stats)


ADVERSARIAL = base.Method(adversarial_objective)
ACT = base.Method(act_objective)
SPECTRAL = base.Method(spectral_objective)
