"""Plain deep metric learning, and its Gaussian-augmented variant GDML (RetrievalGuard)."""

from __future__ import annotations

import jax

from jaxcert.objectives import base


def metric_objective(inputs: base.ObjectiveInputs):
  """The DML loss of `config.loss` on the batch, optionally on Gaussian-noised inputs.

  With `config.noise_sigma > 0` this is GDML (RetrievalGuard, Sec. 4: training on x + z,
  z ~ N(0, sigma^2 I), the noise of the smoothed model, so the base embedding is accurate under it).
  """
  noise_key, loss_key = jax.random.split(inputs.key)
  images = inputs.images
  sigma = inputs.config.get('noise_sigma', 0.0)
  if sigma > 0:
    images = images + sigma * jax.random.normal(noise_key, images.shape, images.dtype)
  embeddings, batch_stats = base.embed_for_training(inputs.model, inputs.params, inputs.batch_stats,
                                                    images)
  loss = base.metric_learning_loss(inputs.config.loss, embeddings, inputs.labels,
                                   inputs.params['objective'], loss_key)
  return loss, ({}, batch_stats)


METRIC = base.Method(metric_objective)
