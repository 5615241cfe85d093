"""Certified training by interval bound propagation: TBT, FCTB (seed 001) and the C-IBP baseline.

Seed 001 (Kakizaki et al., `shared/seeds/001_32788779c7b99f3e.txt`), Sec. 4 and 5.1.4:

* TBT, Tightly Bounding Training (Eq. 20): kappa * T(a, p, n) + (1 - kappa) * sum_{x in {p, n}}
  Reg(a, x), with Reg(a, x) = max(|d(f(a), f(x)) - d-bar_x(a)|, |d(f(a), f(x)) - d-underbar_x(a)|)
  and the distance bounds of Theorems 5-6 over the IBP box of f(a + delta);
* FCTB, Fine-tuning to Candidates with Tighter Bounds (Eq. 21): kappa * d(f0(c1), f(c1))
  + (1 - kappa) * Reg(c1, c2) over pairs of candidates, f0 the frozen pre-trained (TBT) encoder;
* C-IBP (Gowal et al. 2018, "On the effectiveness of interval bound propagation for training
  verifiably robust models", Eq. 12 there): a linear classifier head on the embedding trained with
  kappa * CE(z(x), y) + (1 - kappa) * CE(z-hat(x, eps), y), z-hat the worst-case logits from the
  IBP bounds; the head is discarded at test time and the embedding is used for retrieval.

Schedules (`config.certified`, seed 001 Sec. 5.1.4 after Gowal et al.): eps rises linearly from 0
to `eps` and kappa falls from 1 to `kappa` between `ramp_start_steps` and `ramp_end_steps`
(the paper: 2K and 10K steps, eps_e = 0.2 for MNIST/FMNIST, 2/255 for CIFAR-10, kappa_e = 0.5);
`ramp_start_steps = ramp_end_steps = 0` keeps them fixed (FCTB: eps_e, kappa = 0.2 MNIST,
0.1 FMNIST/CIFAR-10). The bounds are computed at every step, also while eps is 0 (skipping them
with `lax.cond` made the step 12x slower on CPU); a warm-up can instead start from a model trained
by plain triplet loss (`config.init_from`), which is what the first 2K steps of the paper's
schedule (eps = 0, kappa = 1) are.

The bounds are taken through the encoder in inference mode (`model.apply(variables, x)`, BatchNorm
with its running statistics, as at certification); for the CNNs of seed 001 (no BatchNorm) this is
the training-mode function itself.
"""

from __future__ import annotations

from absl import logging

import jax
import jax.numpy as jnp
import optax

from jaxcert import checkpointing
from jaxcert import retrieval
from jaxcert.bounds import distance_bounds
from jaxcert.bounds import input_box
from jaxcert.bounds import interval
from jaxcert.losses import _safe_sqrt
from jaxcert.objectives import base


def ramp_schedule(certified_config, step) -> tuple[jax.Array, jax.Array]:
  """(eps, kappa) at `step`: linear from (0, 1) to (eps, kappa) over the ramp (module docstring).

  Args:
    certified_config: `config.certified` with `eps`, `kappa`, `ramp_start_steps`,
      `ramp_end_steps`.
    step: the optimiser step (traced int32 scalar).

  Returns:
    float32 scalars `(eps, kappa)`.
  """
  start = float(certified_config.ramp_start_steps)
  end = float(certified_config.ramp_end_steps)
  step = jnp.asarray(step, jnp.float32)
  if end > start:
    progress = jnp.clip((step - start) / (end - start), 0., 1.)
  else:
    progress = (step >= end).astype(jnp.float32)
  eps = certified_config.eps * progress
  kappa = 1. - (1. - certified_config.kappa) * progress
  return eps, kappa


def check_certified_config(config) -> None:
  """ValueError unless `config.certified` holds a valid schedule."""
  certified = config.get('certified')
  if certified is None:
    raise ValueError('Certified training needs a config.certified block (eps, kappa, '
                     'ramp_start_steps, ramp_end_steps); see configs/default.py.')
  if not certified.eps >= 0:
    raise ValueError(f'config.certified.eps must be >= 0, got {certified.eps}.')
  if not 0 <= certified.kappa <= 1:
    raise ValueError(f'config.certified.kappa must be in [0, 1], got {certified.kappa}.')
  if not 0 <= certified.ramp_start_steps <= certified.ramp_end_steps:
    raise ValueError('config.certified needs 0 <= ramp_start_steps <= ramp_end_steps, got '
                     f'{certified.ramp_start_steps} and {certified.ramp_end_steps}.')


def _inference_embedding_bounds(inputs: base.ObjectiveInputs, eps):
  """IBP bounds of the encoder (inference mode) over the eps-boxes of the batch's images."""
  variables = base.model_variables(inputs.params['model'], inputs.batch_stats)
  return interval(lambda x: inputs.model.apply(variables, x))(*input_box(inputs.images, eps))


def tightness_regularizer(anchor_emb, anchor_lower, anchor_upper, point_emb) -> jax.Array:
  """Reg(a, x) of seed 001 Eq. 20 for every anchor a and point x: (Na, Nx).

  Reg(a, x) = max(|d - d-bar_x(a)|, |d - d-underbar_x(a)|) with d = ||f(a) - f(x)|| and the
  Theorem 5-6 bounds of ||f(a + delta) - f(x)|| over the box [anchor_lower, anchor_upper].

  Args:
    anchor_emb: (Na, d) clean embeddings f(a).
    anchor_lower, anchor_upper: (Na, d) bounds of f(a + delta).
    point_emb: (Nx, d) clean embeddings f(x).
  """
  distance = retrieval.pairwise_distances(anchor_emb, point_emb)
  min_distance, max_distance = distance_bounds(anchor_lower[:, None], anchor_upper[:, None],
                                               point_emb[None])
  return jnp.maximum(jnp.abs(distance - max_distance), jnp.abs(distance - min_distance))


def tbt_objective(inputs: base.ObjectiveInputs):
  """TBT (seed 001 Eq. 20): kappa * triplet + (1 - kappa) * Reg over the batch's triplets.

  T is the configured metric loss (`config.loss`; seed 001's configs take the triplet loss with
  margin 1.0 averaged over all valid triplets of the batch, mining 'batch_all_mean'). The
  regulariser is averaged over the same valid triplets (a, p, n) as sum_{x in {p, n}} Reg(a, x):
  Reg(a, p) weighted by a's number of negatives, Reg(a, n) by its number of positives, over the
  number of triplets; every image is an anchor, bounded by one IBP pass over the batch. With
  'batch_all' mining (mean over the active triplets only) T is divided by the fraction of active
  triplets, which shifts the balance Eq. 20's kappa sets towards T as training proceeds.
  """
  config = inputs.config
  eps, kappa = ramp_schedule(config.certified, inputs.step)
  embeddings, batch_stats = base.embed_for_training(inputs.model, inputs.params,
                                                    inputs.batch_stats, inputs.images)
  triplet = base.metric_learning_loss(config.loss, embeddings, inputs.labels,
                                      inputs.params['objective'], inputs.key)
  same = inputs.labels[:, None] == inputs.labels[None, :]
  positive = same & ~jnp.eye(same.shape[0], dtype=bool)
  negative = ~same
  num_positives = jnp.sum(positive, axis=1, keepdims=True)
  num_negatives = jnp.sum(negative, axis=1, keepdims=True)
  weights = jnp.where(positive, num_negatives, 0) + jnp.where(negative, num_positives, 0)
  num_triplets = jnp.maximum(jnp.sum(num_positives * num_negatives), 1)

  lower, upper = _inference_embedding_bounds(inputs, eps)
  reg = jnp.sum(weights * tightness_regularizer(embeddings, lower, upper, embeddings)) / num_triplets
  loss = kappa * triplet + (1 - kappa) * reg
  return loss, ({'eps': eps, 'kappa': kappa, 'triplet': triplet, 'reg': reg}, batch_stats)


def fctb_objective(inputs: base.ObjectiveInputs):
  """FCTB (seed 001 Eq. 21): kappa * d(f0(c1), f(c1)) + (1 - kappa) * Reg(c1, c2), c1 != c2.

  Trains on the candidate set (`config.train_split = 'candidates'`); f0 is the frozen encoder of
  `config.init_from`, held in `params['objective']['reference']` (`init_fctb_params`). Summed
  over all pairs (c1, c2) as in Eq. 21, the first term counts once per c2, so the batch loss is
  kappa * mean_c1 d(f0(c1), f(c1)) + (1 - kappa) * mean_{c1 != c2} Reg(c1, c2).
  """
  eps, kappa = ramp_schedule(inputs.config.certified, inputs.step)
  embeddings, batch_stats = base.embed_for_training(inputs.model, inputs.params,
                                                    inputs.batch_stats, inputs.images)
  reference = jax.lax.stop_gradient(inputs.params['objective']['reference'])
  reference_emb = inputs.model.apply(
      base.model_variables(reference['params'], reference['batch_stats']), inputs.images)
  drift = jnp.mean(_safe_sqrt(jnp.sum(jnp.square(reference_emb - embeddings), axis=-1)))
  not_self = ~jnp.eye(embeddings.shape[0], dtype=bool)

  lower, upper = _inference_embedding_bounds(inputs, eps)
  reg = tightness_regularizer(embeddings, lower, upper, embeddings)
  reg = jnp.sum(jnp.where(not_self, reg, 0.)) / jnp.maximum(jnp.sum(not_self), 1)
  loss = kappa * drift + (1 - kappa) * reg
  return loss, ({'eps': eps, 'kappa': kappa, 'drift': drift, 'reg': reg}, batch_stats)


def worst_case_logits(lower, upper, kernel, bias, labels) -> jax.Array:
  """z-hat of Gowal et al. 2018 (Eq. 8 there) for a linear head on a bounded embedding.

  z-hat_j = max over the box of (z_j - z_y), computed on the difference of the head's rows
  (the last layer merged into the specification, Gowal et al. Sec. 3): with centre m and radius r
  of the embedding box, (W_j - W_y) . m + |W_j - W_y| . r + b_j - b_y; z-hat_y = 0. Any logits z
  reachable from the box satisfy z_j - z_y <= z-hat_j, so CE(z-hat, y) >= CE(z, y).

  Args:
    lower, upper: (B, d) embedding bounds.
    kernel: (d, C) head weights; bias: (C,).
    labels: (B,) classes y.

  Returns:
    (B, C) worst-case logits.
  """
  center, radius = (upper + lower) / 2, (upper - lower) / 2
  difference = kernel[None, :, :] - kernel.T[labels][:, :, None]  # (B, d, C): W_j - W_y
  return (jnp.einsum('bd,bdc->bc', center, difference)
          + jnp.einsum('bd,bdc->bc', radius, jnp.abs(difference))
          + bias[None, :] - bias[labels][:, None])


def cibp_objective(inputs: base.ObjectiveInputs):
  """C-IBP: kappa * CE(z, y) + (1 - kappa) * CE(z-hat, y) for the head on the embedding."""
  eps, kappa = ramp_schedule(inputs.config.certified, inputs.step)
  embeddings, batch_stats = base.embed_for_training(inputs.model, inputs.params,
                                                    inputs.batch_stats, inputs.images)
  head = inputs.params['objective']['head']
  logits = embeddings @ head['kernel'] + head['bias']
  clean = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, inputs.labels))

  lower, upper = _inference_embedding_bounds(inputs, eps)
  worst = worst_case_logits(lower, upper, head['kernel'], head['bias'], inputs.labels)
  robust = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(worst, inputs.labels))
  loss = kappa * clean + (1 - kappa) * robust
  accuracy = jnp.mean(jnp.argmax(logits, -1) == inputs.labels)
  return loss, ({'eps': eps, 'kappa': kappa, 'cross_entropy': clean, 'robust_cross_entropy': robust,
                 'accuracy': accuracy}, batch_stats)


def _init_schedule_params(config, context: base.ParamsContext) -> dict:
  check_certified_config(config)
  return base.init_loss_params(config, context)


def init_cibp_params(config, context: base.ParamsContext) -> dict:
  """The C-IBP classifier head Dense(embedding_dim -> num_classes), LeCun-normal, zero bias."""
  check_certified_config(config)
  kernel = jax.nn.initializers.lecun_normal()(context.key, (context.embedding_dim,
                                                            context.num_classes))
  return {'head': {'kernel': kernel, 'bias': jnp.zeros((context.num_classes,), jnp.float32)}}


def init_fctb_params(config, context: base.ParamsContext) -> dict:
  """The frozen pre-trained encoder f0 of Eq. 21: `config.init_from`'s newest checkpoint (or 'DIR@STEP').

  Raises:
    ValueError: `config.init_from` is not set, or `config.train_split` is not 'candidates'.
    FileNotFoundError: it holds no checkpoint.
  """
  del context
  check_certified_config(config)
  if not config.get('init_from'):
    raise ValueError('FCTB fine-tunes a pre-trained encoder (seed 001 Eq. 21): set '
                     'config.init_from to the workdir of a TBT run.')
  if config.get('train_split', 'train') != 'candidates':
    raise ValueError("FCTB trains on the candidate set: set config.train_split = 'candidates'.")
  restored = checkpointing.restore_run_raw(config.init_from)
  reference = {'params': restored['params']['model'],
               'batch_stats': restored.get('batch_stats') or {}}
  return {'reference': jax.tree.map(jnp.asarray, reference)}


def init_tbt_params(config, context: base.ParamsContext) -> dict:
  """The metric loss's parameters; warns when the triplet term is not averaged as Eq. 20 sums it."""
  if config.loss.name == 'triplet' and config.loss.get('mining') != 'batch_all_mean':
    logging.warning(
        "TBT with triplet mining %r: Eq. 20 averages T over all valid triplets, as it does Reg "
        "(mining 'batch_all_mean', set by configs/seed001.py); this mining weighs T by another "
        "factor than kappa (for 'batch_all', 1 / the fraction of active triplets).", config.loss.mining)
  return _init_schedule_params(config, context)


TBT = base.Method(tbt_objective, init_tbt_params)
FCTB = base.Method(fctb_objective, init_fctb_params)
CIBP = base.Method(cibp_objective, init_cibp_params)
