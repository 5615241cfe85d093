"""Certified training by interval bound propagation: TBT, FCTB (Kakizaki et al.), C-IBP, certified triplet.

Kakizaki et al. (WACV 2023), Sec. 4 and 5.1.4:

* TBT, Tightly Bounding Training (Eq. 20): kappa * T(a, p, n) + (1 - kappa) * sum_{x in {p, n}}
  Reg(a, x), with Reg(a, x) = max(|d(f(a), f(x)) - d-bar_x(a)|, |d(f(a), f(x)) - d-underbar_x(a)|)
  and the distance bounds of Theorems 5-6 over the IBP box of f(a + delta);
* FCTB, Fine-tuning to Candidates with Tighter Bounds (Eq. 21): kappa * d(f0(c1), f(c1))
  + (1 - kappa) * Reg(c1, c2) over pairs of candidates, f0 the frozen pre-trained (TBT) encoder;
* C-IBP (Gowal et al. 2018, "On the effectiveness of interval bound propagation for training
  verifiably robust models", Eq. 12 there): a linear classifier head on the embedding trained with
  kappa * CE(z(x), y) + (1 - kappa) * CE(z-hat(x, eps), y), z-hat the worst-case logits from the
  IBP bounds; the head is discarded at test time and the embedding is used for retrieval.

* certified triplet training (method 'certified_triplet', `certified_triplet_objective`): the
  squared-distance triplet hinge bounded over the boxes the certificates consider, for the query
  attack (the anchor's box; exact, as the hinge is affine in the anchor's embedding) and the
  candidate attack (the positive's and negative's boxes), kappa-mixed with the clean loss; with
  the fast-training parts of Shi et al. 2021 ("Fast Certified Robust Training with Short Warmup":
  IBP initialisation and BatchNorm in `jaxcert.models.cnn`, the warm-up regularisers here) and the
  boxes of SABR (Mueller et al. 2023) or the mix of MTL-IBP (De Palma et al. 2024) as options,
  and CROWN-IBP (Zhang et al. 2020) for the query attack's worst triplets.

Schedules (`config.certified`, Kakizaki et al. Sec. 5.1.4 after Gowal et al.): eps rises linearly from 0
to `eps` and kappa falls from 1 to `kappa` between `ramp_start_steps` and `ramp_end_steps`
(the paper: 2K and 10K steps, eps_e = 0.2 for MNIST/FMNIST, 2/255 for CIFAR-10, kappa_e = 0.5);
`ramp_start_steps = ramp_end_steps = 0` keeps them fixed (FCTB: eps_e, kappa = 0.2 MNIST,
0.1 FMNIST/CIFAR-10). The bounds are computed at every step, also while eps is 0 (skipping them
with `lax.cond` made the step 12x slower on CPU); a warm-up can instead start from a model trained
by plain triplet loss (`config.init_from`), which is what the first 2K steps of the paper's
schedule (eps = 0, kappa = 1) are.

The bounds are taken through the encoder in inference mode (`model.apply(variables, x)`, BatchNorm
with its running statistics, as at certification); for the CNNs of Kakizaki et al. (no BatchNorm) this is
the training-mode function itself.
"""

from __future__ import annotations

from absl import logging

import jax
import jax.numpy as jnp
import optax

from jaxcert import attacks
from jaxcert import checkpointing
from jaxcert import common
from jaxcert import retrieval
from jaxcert.bounds import distance_bounds
from jaxcert.bounds import input_box
from jaxcert.bounds import interval
from jaxcert.bounds import linear_spec_lower_bounds
from jaxcert.models import cnn
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
  progress = ramp_progress(certified_config, step)
  eps = certified_config.eps * progress
  kappa = 1. - (1. - certified_config.kappa) * progress
  return eps, kappa


def ramp_progress(certified_config, step) -> jax.Array:
  """How far `step` is through the ramp: 0 before `ramp_start_steps`, 1 from `ramp_end_steps`."""
  start = float(certified_config.ramp_start_steps)
  end = float(certified_config.ramp_end_steps)
  step = jnp.asarray(step, jnp.float32)
  if end > start:
    return jnp.clip((step - start) / (end - start), 0., 1.)
  return (step >= end).astype(jnp.float32)


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
  """Reg(a, x) of Kakizaki et al. Eq. 20 for every anchor a and point x: (Na, Nx).

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
  """TBT (Kakizaki et al. Eq. 20): kappa * triplet + (1 - kappa) * Reg over the batch's triplets.

  T is the configured metric loss (`config.loss`; Kakizaki et al.'s configs take the triplet loss with
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
  lower, upper = _inference_embedding_bounds(inputs, eps)
  reg = _tbt_regularizer(embeddings, lower, upper, inputs.labels)
  loss = kappa * triplet + (1 - kappa) * reg
  return loss, ({'eps': eps, 'kappa': kappa, 'triplet': triplet, 'reg': reg}, batch_stats)


def fctb_objective(inputs: base.ObjectiveInputs):
  """FCTB (Kakizaki et al. Eq. 21): kappa * d(f0(c1), f(c1)) + (1 - kappa) * Reg(c1, c2), c1 != c2.

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
  drift = jnp.mean(common.safe_sqrt(jnp.sum(jnp.square(reference_emb - embeddings), axis=-1)))
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
    raise ValueError('FCTB fine-tunes a pre-trained encoder (Kakizaki et al. Eq. 21): set '
                     'config.init_from to the workdir of a TBT run.')
  if config.get('train_split', 'train') != 'candidates':
    raise ValueError("FCTB trains on the candidate set: set config.train_split = 'candidates'.")
  variables = checkpointing.encoder_variables(checkpointing.restore_run_raw(config.init_from))
  return {'reference': jax.tree.map(jnp.asarray, {'batch_stats': {}, **variables})}


def init_tbt_params(config, context: base.ParamsContext) -> dict:
  """The metric loss's parameters; warns when the triplet term is not averaged as Eq. 20 sums it."""
  if config.loss.name == 'triplet' and config.loss.get('mining') != 'batch_all_mean':
    logging.warning(
        "TBT with triplet mining %r: Eq. 20 averages T over all valid triplets, as it does Reg "
        "(mining 'batch_all_mean', set by configs/kakizaki.py); this mining weighs T by another "
        "factor than kappa (for 'batch_all', 1 / the fraction of active triplets).", config.loss.mining)
  return _init_schedule_params(config, context)


TBT = base.Method(tbt_objective, init_tbt_params)
FCTB = base.Method(fctb_objective, init_fctb_params)
CIBP = base.Method(cibp_objective, init_cibp_params)


# ---------------------------------------------------------------------------------------------
# Certified triplet training: the triplet hinge bounded over the boxes the certificates use.
# ---------------------------------------------------------------------------------------------

QA_BOUNDS = ('linear', 'distance')  # config.certified.qa_bound
ADVERSARIAL_MODES = ('none', 'mtl_ibp', 'sabr')  # config.certified.adversarial
TRIPLET_SELECTIONS = ('all', 'nearest_positive', 'ranking')  # config.certified.triplets


def _squared_pairwise(a, b) -> jax.Array:
  """||a_i - b_j||^2 (Na, Nb), summed from squared coordinate differences (no norm expansion)."""
  return jnp.sum(jnp.square(a[:, None, :] - b[None, :, :]), axis=-1)


def query_attack_triplet_bounds(lower, upper, embeddings, qa_bound: str = 'linear',
                                targets=None) -> jax.Array:
  """Upper bounds U[a, p, n] >= max over z in [lower_a, upper_a] of ||z - p||^2 - ||z - n||^2.

  The query attack (QA) moves the anchor's embedding z = f(a + delta) inside its IBP box while
  the candidates p = f(p), n = f(n) stay clean. Two bounds:

  * 'linear' (exact over the box): ||z - p||^2 - ||z - n||^2 = (n - p) . ((z - p) + (z - n))
    (expand both squares: the ||z||^2 cancel) = 2 z . (n - p) + const is affine in z, so over
    z = m + r * s, s in [-1, 1]^d (centre m, radius r of the box) its maximum is at the corner
    s = sign(n - p): (n - p) . ((m - p) + (m - n)) + 2 r . |n - p|, attained. The first term is computed as
    ||m - p||^2 - ||m - n||^2 with each square summed from coordinate differences (never the
    ||p||^2 - ||n||^2 + 2 z . (n - p) expansion), the second by one matmul over all (p, n).
  * 'distance' (Kakizaki et al., Theorem 1's comparison): d-bar_p(a)^2 - d-underbar_n(a)^2 with
    the distance bounds of Theorems 5-6 taken separately, >= the linear form.

  Args:
    lower, upper: (B, d) bounds of the anchors' embeddings f(a + delta).
    embeddings: (B, d) clean embeddings, serving as positives and negatives.
    qa_bound: 'linear' or 'distance'.
    targets: None, or (B,) indices of one positive per anchor (`target_triplets`).

  Returns:
    (B, B, B) array indexed [anchor, positive, negative]; with `targets`, (B, 1, B): its entries
    [a, targets[a], n], in O(B^2 d) operations instead of O(B^3 d).
  """
  if qa_bound == 'linear':
    center, radius = (upper + lower) / 2, (upper - lower) / 2
    to_center = _squared_pairwise(center, embeddings)
    if targets is None:
      gaps = jnp.abs(embeddings[:, None, :] - embeddings[None, :, :])  # (p, n, d): |n - p|
      spread = jnp.einsum('ad,pnd->apn', radius, gaps)
    else:
      gaps = jnp.abs(embeddings[targets][:, None, :] - embeddings[None, :, :])  # (a, n, d)
      spread = jnp.einsum('ad,and->an', radius, gaps)[:, None, :]
    return anchor_differences(to_center, to_center, targets) + 2 * spread
  if qa_bound == 'distance':
    min_distance, max_distance = distance_bounds(lower[:, None], upper[:, None], embeddings[None])
    return anchor_differences(jnp.square(max_distance), jnp.square(min_distance), targets)
  raise ValueError(f'Unknown config.certified.qa_bound {qa_bound!r}; valid: {list(QA_BOUNDS)}.')


def anchor_differences(to_positive, to_negative, targets=None) -> jax.Array:
  """D[a, p, n] = to_positive[a, p] - to_negative[a, n] from two (B, B) arrays: (B, B, B), or with
  `targets` ((B,) one positive per anchor) the (B, 1, B) array of the entries [a, targets[a], n]."""
  if targets is not None:
    to_positive = jnp.take_along_axis(to_positive, targets[:, None], axis=1)
  return to_positive[:, :, None] - to_negative[:, None, :]


def candidate_attack_triplet_bounds(embeddings, lower, upper, targets=None) -> jax.Array:
  """Upper bounds U[a, p, n] >= max of ||f(a) - p'||^2 - ||f(a) - n'||^2 over p', n' in their boxes.

  The candidate attack (CA) moves every candidate inside its own IBP box while the anchor
  (query) stays clean; the two boxes are independent, so the maximum is d-bar_a(p)^2 -
  d-underbar_a(n)^2 with the exact distance bounds of Kakizaki et al., Theorems 5-6 (attained).

  Args:
    embeddings: (B, d) clean embeddings f(a) of the anchors.
    lower, upper: (B, d) bounds of the candidates' embeddings f(x + delta).
    targets: None, or (B,) indices of one positive per anchor (`target_triplets`).

  Returns:
    (B, B, B) array indexed [anchor, positive, negative]; (B, 1, B) with `targets`
    (`anchor_differences`).
  """
  min_distance, max_distance = distance_bounds(lower[None], upper[None], embeddings[:, None])
  return anchor_differences(jnp.square(max_distance), jnp.square(min_distance), targets)


def valid_triplets(labels) -> jax.Array:
  """(B, B, B) mask of the valid triplets (a, p, n): p != a of a's class, n of another class."""
  same = labels[:, None] == labels[None, :]
  positive = same & ~jnp.eye(same.shape[0], dtype=bool)
  return positive[:, :, None] & ~same[:, None, :]


def selected_triplets(labels, embeddings, selection: str, exclude_nearest: int = 0) -> jax.Array:
  """(B, B, B) mask of the triplets [anchor, target, other] the certified hinges average over.

  * 'all': every valid triplet (`valid_triplets`).
  * 'nearest_positive': per anchor, only its nearest positive (clean distances) as the target,
    against every negative: the class is not pulled onto one point as with all positives, so it
    keeps the spread the rank certificates need.
  * 'ranking': the nearest positive against every other point of the batch, positives included,
    except the `exclude_nearest` points nearest to the anchor: CR-Recall@K certifies a candidate
    only if fewer than K candidates of any class may come closer (Kakizaki et al., Theorems
    3-4), and this asks the same of the batch.
  """
  if selection == 'all':
    return valid_triplets(labels)
  targets, mask = target_triplets(labels, embeddings, selection, exclude_nearest)
  is_target = jnp.arange(labels.shape[0])[None, :] == targets[:, None]
  return is_target[:, :, None] & mask


def target_triplets(labels, embeddings, selection: str,
                    exclude_nearest: int = 0) -> tuple[jax.Array, jax.Array]:
  """`selected_triplets` for the selections with one target per anchor, in target-row form.

  Returns:
    `(targets, mask)`: (B,) the index of each anchor's nearest positive (clean distances) and the
    (B, 1, B) mask of the triplets [a, targets[a], n] selected ('nearest_positive', 'ranking'),
    for the bounds' `targets` argument (O(B^2 d) instead of O(B^3 d) per bound). An anchor
    without positives selects none.
  """
  valid = valid_triplets(labels)
  size = labels.shape[0]
  distances = jax.lax.stop_gradient(_squared_pairwise(embeddings, embeddings))
  positive = jnp.any(valid, axis=2)
  targets = jnp.argmin(jnp.where(positive, distances, jnp.inf), axis=1)
  has_target = jnp.any(positive, axis=1)[:, None, None]
  if selection == 'nearest_positive':
    return targets, has_target & jnp.take_along_axis(valid, targets[:, None, None], axis=1)
  if selection == 'ranking':
    is_target = jnp.arange(size)[None, :] == targets[:, None]
    others = ~jnp.eye(size, dtype=bool) & ~is_target
    order = jnp.argsort(jnp.argsort(jnp.where(others, distances, jnp.inf), axis=1), axis=1)
    return targets, has_target & (others & (order >= exclude_nearest))[:, None, :]
  raise ValueError(f'Unknown config.certified.triplets {selection!r}; valid: {list(TRIPLET_SELECTIONS)}.')


def mean_hinge(differences, margin, valid, allowed_violations: int = 0) -> jax.Array:
  """Mean of max(0, differences + margin) over the valid triplets (0 if there are none).

  With `allowed_violations` = m > 0, each row [a, p] (anchor and target) leaves out its m largest
  hinges (among its valid triplets) from the mean: a rank certificate at K tolerates K - 1
  candidates that may come closer than the target (Kakizaki et al. Theorems 3-4), so the m
  triplets whose bound is worst are not pushed; the others are. Unlike `exclude_nearest`, which
  leaves out the points nearest in clean distance, this leaves out those the bound itself
  cannot separate, which is what the certificate counts.
  """
  hinge = jnp.where(valid, jax.nn.relu(differences + margin), 0.)
  total, count = jnp.sum(hinge), jnp.sum(valid)
  if allowed_violations:
    row_count = jnp.sum(valid, axis=-1)
    # Invalid entries are 0 <= every valid hinge, so the m largest entries of a row are its m
    # largest valid hinges (ties with 0 change no sum).
    total = total - jnp.sum(jax.lax.top_k(hinge, allowed_violations)[0])
    count = count - jnp.sum(jnp.minimum(row_count, allowed_violations))
  return total / jnp.maximum(count, 1)


def crown_ibp_tightening(embed, input_lower, input_upper, lower, upper, embeddings, targets,
                         differences, valid, rows: int) -> tuple[jax.Array, jax.Array]:
  """The QA bounds `differences` with each anchor's `rows` worst triplets bounded by CROWN-IBP.

  The query-attack hinge of triplet (a, p, n) is ||z - p||^2 - ||z - n||^2 = 2 (n - p) . z +
  ||p||^2 - ||n||^2 with z = f(a + delta), a linear specification of the encoder's output.
  `query_attack_triplet_bounds` maximises it over the anchor's embedding box, 2 U_box with
  U_box = (n - p) . m + |n - p| . r (centre m, radius r); CROWN-IBP (Zhang et al. 2020,
  "Towards stable and efficient training of verifiably robust neural networks", Sec. 3.2)
  bounds the specification through the network instead: U_crown = -(lower bound of
  (p - n) . f(a + delta)) by one backward pass from the output with the row p - n, the
  intermediate bounds by IBP (`linear_spec_lower_bounds`, intersected with the box, so U_crown <=
  U_box). Each anchor's `rows` valid triplets with the largest box bound (the ones the hinge
  pushes hardest; the selection carries no gradient) get 2 (U_crown - U_box) <= 0 added; every
  other entry keeps its box bound. Every entry stays an upper bound of the hinge's maximum over
  the input box [input_lower, input_upper].

  Args:
    embed: the encoder as bounded (inference mode), a function of a batch of images.
    input_lower, input_upper: (B, ...) the anchors' input boxes.
    lower, upper: (B, d) IBP bounds of the anchors' embeddings over those boxes.
    embeddings: (B, d) clean embeddings (positives and negatives).
    targets: (B,) each anchor's positive (`target_triplets`).
    differences: (B, 1, B) `query_attack_triplet_bounds(..., 'linear', targets)`.
    valid: (B, 1, B) the triplets selected.
    rows: triplets per anchor bounded through the network.

  Returns:
    `(differences', tightening)`: the (B, 1, B) bounds and the (B, rows) values 2 (U_crown -
    U_box) added to them.
  """
  scores = jnp.where(valid[:, 0], jax.lax.stop_gradient(differences[:, 0]), -jnp.inf)
  chosen = jax.lax.top_k(scores, rows)[1]  # (B, rows)
  positive = embeddings[targets][:, None, :]  # (B, 1, d)
  negative = embeddings[chosen]  # (B, rows, d)
  gap = negative - positive  # n - p
  center, radius = (upper + lower) / 2, (upper - lower) / 2
  box_bound = (jnp.einsum('brd,bd->br', gap, center)
               + jnp.einsum('brd,bd->br', jnp.abs(gap), radius))
  network_bound = -linear_spec_lower_bounds(embed, 'crown_ibp')(input_lower, input_upper, -gap)
  tightening = 2 * jnp.minimum(network_bound - box_bound, 0.)
  size = differences.shape[0]
  added = jnp.zeros((size, size), differences.dtype).at[
      jnp.arange(size)[:, None], chosen].add(tightening)
  return differences + added[:, None, :], tightening


def warmup_regularizers(input_lower, input_upper, preactivation_lower, preactivation_upper,
                        tolerance: float) -> tuple[jax.Array, jax.Array]:
  """Shi et al. 2021's warm-up regularisers L_tightness and L_relu (Sec. 4.3, Eqs. 9-10).

  For every hidden layer l with pre-activation bounds [l_l, u_l] (centre c, radius w):
  L_tightness = mean_l relu(tau - w_0 / w_l) / tau, w_0 the input box's mean radius and w_l the
  layer's, which penalises interval growth beyond 1 / tau; L_relu = mean_l [relu(tau - rho_mean)
  + relu(tau - rho_var)] / tau, with rho the smaller of the ratios (and their inverses) of the
  mean of c over the surely active units (l > 0) to minus that over the surely inactive ones
  (u < 0), and of the sums of squared deviations of c from its mean over the same two sets: it
  keeps IBP from driving the ReLUs to one side.

  Args:
    input_lower, input_upper: the input box.
    preactivation_lower, preactivation_upper: sequences of the hidden ReLUs' input bounds.
    tolerance: tau (Shi et al.: 0.5).

  Returns:
    `(L_tightness, L_relu)`, scalars.
  """
  tiny = 1e-12
  input_radius = jnp.mean((input_upper - input_lower) / 2)
  tightness, relu = [], []
  for lower, upper in zip(preactivation_lower, preactivation_upper):
    center, radius = (upper + lower) / 2, (upper - lower) / 2
    tightness.append(jax.nn.relu(tolerance - input_radius / jnp.maximum(jnp.mean(radius), tiny)))
    active, inactive = lower > 0, upper < 0
    mean_active = jnp.mean(jnp.where(active, center, 0.))
    mean_inactive = -jnp.mean(jnp.where(inactive, center, 0.))
    deviation = jnp.square(center - jnp.mean(center))
    var_active = jnp.sum(jnp.where(active, deviation, 0.))
    var_inactive = jnp.sum(jnp.where(inactive, deviation, 0.))
    terms = []
    for numerator, denominator in ((mean_active, mean_inactive), (var_active, var_inactive)):
      ratio = numerator / jnp.maximum(denominator, tiny)
      balance = jnp.minimum(ratio, 1 / jnp.maximum(ratio, tiny))
      terms.append(jax.nn.relu(tolerance - balance))
    relu.append(sum(terms))
  num_layers = max(len(tightness), 1)
  return sum(tightness) / num_layers / tolerance, sum(relu) / num_layers / tolerance


def forward_for_bounds(inputs: base.ObjectiveInputs):
  """Clean training-mode embeddings, the new batch_stats, and the variables the bounds use.

  Without BatchNorm the bounds use the encoder's parameters as they are. With the CNNs' BatchNorm
  (`batch_norm_momentum` field), as Shi et al. 2021 do, the bounds normalise with the statistics of
  the clean batch (a clone with momentum 0 returns exactly the batch's mean and variance as its
  running averages; inference mode with them is the training-mode map), and the running averages
  are updated here at the encoder's momentum. Other encoders with BatchNorm (ResNets) are bounded
  with their running averages, as at certification.
  """
  model, params = inputs.model, inputs.params['model']
  if not inputs.batch_stats:
    variables = base.model_variables(params, {})
    return model.apply(variables, inputs.images, train=True), {}, variables
  if not hasattr(model, 'batch_norm_momentum'):
    embeddings, batch_stats = base.embed_for_training(model, inputs.params, inputs.batch_stats,
                                                      inputs.images)
    return embeddings, batch_stats, base.model_variables(params, inputs.batch_stats)
  momentum = model.batch_norm_momentum
  embeddings, updates = model.clone(batch_norm_momentum=0.).apply(
      base.model_variables(params, inputs.batch_stats), inputs.images, train=True,
      mutable=['batch_stats'])
  batch_moments = updates['batch_stats']
  running = jax.tree.map(lambda old, new: momentum * old + (1 - momentum) * jax.lax.stop_gradient(new),
                         inputs.batch_stats, batch_moments)
  return embeddings, running, base.model_variables(params, batch_moments)


def embedding_and_preactivation_bounds(model, variables, lower, upper):
  """IBP bounds of the embedding and of every hidden ReLU's input over the box [lower, upper].

  The CNNs sow their ReLUs' inputs (`jaxcert.models.cnn.PREACTIVATIONS`); other encoders give
  none. Returns `(emb_lower, emb_upper, pre_lowers, pre_uppers)`.
  """
  def embed_with_preactivations(x):
    embeddings, state = model.apply(variables, x, mutable=['intermediates'])
    return embeddings, tuple(state.get('intermediates', {}).get(cnn.PREACTIVATIONS, ()))
  (emb_lower, pre_lowers), (emb_upper, pre_uppers) = interval(embed_with_preactivations)(lower, upper)
  return emb_lower, emb_upper, pre_lowers, pre_uppers


def sabr_box(images, adversarial_images, eps, shrink: float) -> tuple[jax.Array, jax.Array]:
  """SABR's box (Mueller et al. 2023, Sec. 3): radius shrink * eps around the adversarial point.

  The centre is the adversarial point moved to within (1 - shrink) * eps of `images`, so the box
  lies inside the eps-box around `images`; both are clipped to the pixel range [0, 1].
  """
  box_eps = shrink * eps
  slack = eps - box_eps
  return input_box(jnp.clip(adversarial_images, images - slack, images + slack), box_eps)


def _anchor_attack_loss(x, embed, embeddings, labels, margin):
  """Per anchor: mean over its valid (p, n) of the squared-distance triplet hinge at f(x)."""
  valid = valid_triplets(labels)
  to_points = _squared_pairwise(embed(x), embeddings)
  hinge = jax.nn.relu(to_points[:, :, None] - to_points[:, None, :] + margin)
  return jnp.sum(jnp.where(valid, hinge, 0.), axis=(1, 2)) / jnp.maximum(
      jnp.sum(valid, axis=(1, 2)), 1)


def certified_triplet_objective(inputs: base.ObjectiveInputs):
  """Certified triplet training: kappa * T + (1 - kappa) * R (+ TBT's Reg, + warm-up terms).

  T is the clean metric loss (`config.loss`). R bounds the squared-distance triplet hinge
  max(0, ||a - p||^2 - ||a - n||^2 + margin) over the perturbations the certificates consider,
  averaged over the triplets `config.certified.triplets` selects (`selected_triplets`), less each
  row's `allowed_violations` worst-bounded triplets (`mean_hinge`):
  `qa_weight` x its bound under the query attack (the anchor's box, `query_attack_triplet_bounds`)
  + `ca_weight` x its bound under the candidate attack (p's and n's boxes,
  `candidate_attack_triplet_bounds`). `config.certified.adversarial` chooses the anchor boxes:
  'none' the eps-box (IBP training); 'sabr' (Mueller et al. 2023) the box of radius
  `sabr_lambda` x eps around a PGD point of the anchor's hinge, shifted to lie in the eps-box;
  'mtl_ibp' (De Palma et al. 2024) the eps-box, with the QA term replaced by
  `mtl_alpha` x bound + (1 - mtl_alpha) x the hinge at the PGD point. The PGD point maximises each
  anchor's mean QA hinge (`pgd_steps` sign-gradient steps of 2.5 eps / pgd_steps from a random
  start, Madry et al.). With `crown_ibp_rows` = k > 0 (CROWN-IBP training, Zhang et al. 2020),
  each anchor's k worst QA triplets are bounded through the network (`crown_ibp_tightening`) and
  the QA bounds are beta x those + (1 - beta) x the box bounds, beta going from
  `crown_ibp_beta_start` to `crown_ibp_beta_end` over the eps ramp. Optional: `tbt_weight` x
  Kakizaki et al.'s Reg (Eq. 20) added to R, and Shi et al.'s warm-up regularisers
  `warmup_weight` x (1 - eps / eps_e) x (L_tightness + L_relu) (`warmup_regularizers`).
  """
  config = inputs.config
  certified = config.certified
  eps, kappa = ramp_schedule(certified, inputs.step)
  embeddings, batch_stats, variables = forward_for_bounds(inputs)
  clean = base.metric_learning_loss(config.loss, embeddings, inputs.labels,
                                    inputs.params['objective'], inputs.key)
  if certified.triplets == 'all':
    targets, valid = None, valid_triplets(inputs.labels)
  else:
    targets, valid = target_triplets(inputs.labels, embeddings, certified.triplets,
                                     certified.exclude_nearest)
  margin = certified.margin
  metrics = {'eps': eps, 'kappa': kappa, 'triplet': clean}

  input_lower, input_upper = input_box(inputs.images, eps)
  adversarial = certified.adversarial
  if adversarial != 'none':
    embed = jax.tree_util.Partial(inputs.model.apply, jax.lax.stop_gradient(variables))
    attack = attacks.pgd(_anchor_attack_loss, eps=eps, step_size=2.5 * eps / certified.pgd_steps,
                         num_steps=certified.pgd_steps, loop='python')
    adversarial_images = jax.lax.stop_gradient(attack(inputs.key, inputs.images, embed,
                                                      jax.lax.stop_gradient(embeddings),
                                                      inputs.labels, margin))
    if adversarial == 'sabr':
      input_lower, input_upper = sabr_box(inputs.images, adversarial_images, eps,
                                          certified.sabr_lambda)
  lower, upper, pre_lowers, pre_uppers = embedding_and_preactivation_bounds(
      inputs.model, variables, input_lower, input_upper)

  allowed = certified.allowed_violations
  qa_differences = query_attack_triplet_bounds(lower, upper, embeddings, certified.qa_bound,
                                               targets)
  if certified.crown_ibp_rows:
    crown_ibp_differences, tightening = crown_ibp_tightening(
        jax.tree_util.Partial(inputs.model.apply, variables), input_lower, input_upper, lower,
        upper, embeddings, targets, qa_differences, valid, certified.crown_ibp_rows)
    beta = certified.crown_ibp_beta_start + (
        certified.crown_ibp_beta_end - certified.crown_ibp_beta_start) * ramp_progress(
            certified, inputs.step)
    qa_differences = beta * crown_ibp_differences + (1 - beta) * qa_differences
    metrics.update(crown_ibp_beta=beta, crown_ibp_tightening=jnp.mean(tightening))
  qa = mean_hinge(qa_differences, margin, valid, allowed)
  if adversarial == 'mtl_ibp':
    adversarial_embeddings = inputs.model.apply(variables, adversarial_images)
    to_points = _squared_pairwise(adversarial_embeddings, embeddings)
    at_attack = mean_hinge(anchor_differences(to_points, to_points, targets), margin, valid)
    metrics['qa_attack_hinge'] = at_attack
    qa = certified.mtl_alpha * qa + (1 - certified.mtl_alpha) * at_attack
  ca = mean_hinge(candidate_attack_triplet_bounds(embeddings, lower, upper, targets), margin,
                  valid, allowed)
  robust = certified.qa_weight * qa + certified.ca_weight * ca
  metrics.update(qa_bound_hinge=qa, ca_bound_hinge=ca)
  if certified.tbt_weight:
    reg = _tbt_regularizer(embeddings, lower, upper, inputs.labels)
    robust = robust + certified.tbt_weight * reg
    metrics['reg'] = reg
  loss = kappa * clean + (1 - kappa) * robust
  if certified.warmup_weight:
    tightness, relu = warmup_regularizers(input_lower, input_upper, pre_lowers, pre_uppers,
                                          certified.warmup_tolerance)
    intensity = certified.warmup_weight * (1 - eps / max(certified.eps, 1e-12))
    loss = loss + intensity * (tightness + relu)
    metrics.update(warmup_tightness=tightness, warmup_relu=relu)
  metrics['box_radius'] = jnp.mean(jnp.linalg.norm((upper - lower) / 2, axis=-1))
  return loss, (metrics, batch_stats)


def _tbt_regularizer(embeddings, lower, upper, labels) -> jax.Array:
  """Kakizaki et al.'s Reg summed over {p, n} and averaged over the batch's valid triplets (a, p, n):
  Reg(a, p) weighted by a's number of negatives, Reg(a, n) by its number of positives, over the
  number of triplets (`tbt_objective`; the TBT term of `certified_triplet_objective`)."""
  same = labels[:, None] == labels[None, :]
  positive = same & ~jnp.eye(same.shape[0], dtype=bool)
  negative = ~same
  num_positives = jnp.sum(positive, axis=1, keepdims=True)
  num_negatives = jnp.sum(negative, axis=1, keepdims=True)
  weights = jnp.where(positive, num_negatives, 0) + jnp.where(negative, num_positives, 0)
  num_triplets = jnp.maximum(jnp.sum(num_positives * num_negatives), 1)
  return jnp.sum(weights * tightness_regularizer(embeddings, lower, upper, embeddings)) / num_triplets


def check_certified_triplet_config(config) -> None:
  """ValueError unless `config.certified` holds valid certified-triplet settings."""
  check_certified_config(config)
  certified = config.certified
  if certified.qa_bound not in QA_BOUNDS:
    raise ValueError(f'Unknown config.certified.qa_bound {certified.qa_bound!r}; valid: '
                     f'{list(QA_BOUNDS)}.')
  if certified.triplets not in TRIPLET_SELECTIONS:
    raise ValueError(f'Unknown config.certified.triplets {certified.triplets!r}; valid: '
                     f'{list(TRIPLET_SELECTIONS)}.')
  if certified.adversarial not in ADVERSARIAL_MODES:
    raise ValueError(f'Unknown config.certified.adversarial {certified.adversarial!r}; valid: '
                     f'{list(ADVERSARIAL_MODES)}.')
  if certified.adversarial != 'none' and not certified.pgd_steps >= 1:
    raise ValueError(f'config.certified.pgd_steps must be >= 1, got {certified.pgd_steps}.')
  if not 0 < certified.sabr_lambda <= 1:
    raise ValueError(f'config.certified.sabr_lambda must be in (0, 1], got {certified.sabr_lambda}.')
  if not 0 <= certified.mtl_alpha <= 1:
    raise ValueError(f'config.certified.mtl_alpha must be in [0, 1], got {certified.mtl_alpha}.')
  if not (isinstance(certified.crown_ibp_rows, int) and certified.crown_ibp_rows >= 0):
    raise ValueError(f'config.certified.crown_ibp_rows must be an integer >= 0, got '
                     f'{certified.crown_ibp_rows!r}.')
  if certified.crown_ibp_rows >= config.batch_size:
    raise ValueError(f'config.certified.crown_ibp_rows ({certified.crown_ibp_rows}) must be below '
                     f'the batch size ({config.batch_size}): it counts triplets per anchor.')
  if certified.crown_ibp_rows and (certified.triplets == 'all' or certified.qa_bound != 'linear'):
    raise ValueError("config.certified.crown_ibp_rows bounds the linear QA hinge of one target "
                     "per anchor: it needs certified.qa_bound = 'linear' and certified.triplets "
                     f"'nearest_positive' or 'ranking', got {certified.qa_bound!r} and "
                     f"{certified.triplets!r}.")
  for name in ('crown_ibp_beta_start', 'crown_ibp_beta_end'):
    if not 0 <= certified[name] <= 1:
      raise ValueError(f'config.certified.{name} must be in [0, 1], got {certified[name]}.')
  if not (isinstance(certified.allowed_violations, int) and certified.allowed_violations >= 0):
    raise ValueError(f'config.certified.allowed_violations must be an integer >= 0, got '
                     f'{certified.allowed_violations!r}.')
  for name in ('margin', 'qa_weight', 'ca_weight', 'tbt_weight', 'warmup_weight'):
    if not certified[name] >= 0:
      raise ValueError(f'config.certified.{name} must be >= 0, got {certified[name]}.')
  if config.get('grad_clip_norm') is None:
    logging.warning('Certified triplet training without gradient clipping '
                    '(config.grad_clip_norm): the first steps of the eps ramp can fill Adam with '
                    'huge gradients; configs/kakizaki.py sets 10.')


def init_certified_triplet_params(config, context: base.ParamsContext) -> dict:
  check_certified_triplet_config(config)
  return base.init_loss_params(config, context)


CERTIFIED_TRIPLET = base.Method(certified_triplet_objective, init_certified_triplet_params)
