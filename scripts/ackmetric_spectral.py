"""AckMetric (slides after Huai et al.) end to end: train f(x) = W x without and with the spectral defence
on two MNIST classes, attack every test pair, check the linear bound on each, write the results.

  python -m scripts.ackmetric_spectral --config configs/mnist_linear_spectral.py \
      --workdir runs/ackmetric --results results/ackmetric \
      --config.data.name=idx --config.data.data_dir=data/mnist

Two runs from the one config: 'undefended' (`spectral.alphas = ()`: the margin loss L1) and
'defended' (the config's alphas: L2). For each, every pair i < j of the first
`pairwise.num_test_per_class` test images of each class is attacked by
`attacks.linear_pairwise_attack` at each eps of `pairwise.eps`; the success rate is the share of
same-class pairs judged similar (D <= gamma) that the attack makes dissimilar, and
`attacks.linear_pairwise_distance_bound` is checked against the attacked distance of every pair.
"""

import json
import os

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags
import numpy as np

from jaxcert import attacks
from jaxcert import data
from jaxcert.data import core
from jaxcert import metrics
from jaxcert import report
from jaxcert import training
from jaxcert.objectives import adversarial

_CONFIG = config_flags.DEFINE_config_file('config', None, 'configs/mnist_linear_spectral.py',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of the two training runs.')
_RESULTS = flags.DEFINE_string('results', None, 'Directory for the tables and plots.')
flags.mark_flags_as_required(['config', 'workdir', 'results'])


def two_class_dataset(dataset: data.Dataset, classes) -> data.Dataset:
  """The examples of `classes` only, relabelled 0 and 1 in the order given."""
  splits = []
  for split in (dataset.train, dataset.test):
    labels = np.asarray(split.labels)
    keep = np.flatnonzero(np.isin(labels, classes))
    relabelled = (labels[keep] == classes[1]).astype(np.int32)
    splits.append(core.Split(np.asarray(split.images[keep]), relabelled))
  return core.make_dataset(f'{dataset.name}_{classes[0]}v{classes[1]}', *splits)


def test_subset(split: data.Split, per_class: int):
  """The first `per_class` test images of each class."""
  labels = np.asarray(split.labels)
  keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in (0, 1)])
  return np.asarray(split.images[keep]), labels[keep]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  settings = config.pairwise
  dataset = two_class_dataset(data.load_dataset(config.data), tuple(settings.classes))
  images, labels = test_subset(dataset.test, settings.num_test_per_class)
  first, second = attacks.all_pairs(len(labels))
  same_class = labels[first] == labels[second]
  rows, summary = [], {}
  for variant, alphas in (('undefended', ()), ('defended', tuple(config.spectral.alphas))):
    variant_config = config.copy_and_resolve_references()
    variant_config.unlock()
    variant_config.spectral.alphas = alphas
    workdir = os.path.join(_WORKDIR.value, variant)
    model, state = training.train(variant_config, workdir, dataset)
    retrieval_results = metrics.evaluate(variant_config, model, state.variables(), dataset)
    weight = np.asarray(adversarial.linear_encoder_weight(model, state.params['model']))
    summary[variant] = {'alphas': list(alphas), 'retrieval': retrieval_results['model']}
    for eps in settings.eps:
      result = attacks.evaluate_linear_pairwise_attack(
          weight, images, labels, eps=float(eps), gamma=config.spectral.gamma,
          num_steps=settings.num_steps)
      clean = result['clean_distances']
      row = {'model': variant, 'eps': float(eps),
             'success_rate': result['success_rate'],
             'success_rate_all_similar': result['success_rate_all_similar'],
             'certified_rate': result['certified_rate'],
             'similar_same_class_pairs': result['num_similar_same_class'],
             'pair_accuracy': float(np.mean(np.where(same_class, clean <= config.spectral.gamma,
                                                     clean > config.spectral.gamma))),
             'pairs': result['num_pairs'], 'bound_violations': result['bound_violations'],
             'max_excess_over_bound': result['max_excess_over_bound'],
             'mean_bound_slack': result['mean_bound_slack'], 'lambda_max': result['lambda_max']}
      rows.append(row)
      print(row, flush=True)
  table = report.write_table(os.path.join(_RESULTS.value, 'pairwise_attack'), rows)
  report.write_json(os.path.join(_RESULTS.value, 'results.json'), {'rows': rows, **summary})
  report.plot_curves(
      os.path.join(_RESULTS.value, 'success_vs_eps.png'),
      {variant: ([r['eps'] for r in rows if r['model'] == variant],
                 [r['success_rate'] for r in rows if r['model'] == variant])
       for variant in ('undefended', 'defended')},
      xlabel='eps (joint L-inf budget)', ylabel='attack success rate (gamma = 2)',
      title='AckMetric: linear f = Wx, MNIST two classes')
  print(table)
  print(json.dumps(summary, indent=2))


if __name__ == '__main__':
  app.run(main)
