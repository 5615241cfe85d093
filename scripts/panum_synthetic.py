"""Panum et al. App. E end to end: natural vs robust model on the two-Gaussian data, benign vs
adversarial R@1 and mAP@R under Algorithm 1, beside the paper's numbers.

  python -m scripts.panum_synthetic --config configs/synthetic_mlp_adversarial.py \
      --workdir runs/panum --results results/panum

Both models come from the one config: 'natural' sets adversarial.attack_rate = 0, 'robust' keeps the
config's rate. Each is trained by `training.train_and_evaluate` and attacked by certify.py's mode
'attack' (`certification.run`, kinds = ('nn',)); the tables, plots and JSON of each go to
<workdir>/<variant>/certify_attack and the comparison to --results.
"""

import os
import shutil

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from jaxcert import certification
from jaxcert import report
from jaxcert import training

_CONFIG = config_flags.DEFINE_config_file('config', None, 'configs/synthetic_mlp_adversarial.py',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory of the two training runs.')
_RESULTS = flags.DEFINE_string('results', None, 'Directory for the comparison table and plots.')
flags.mark_flags_as_required(['config', 'workdir', 'results'])

# Panum et al. App. E (text): R@1 in percent; mAP@R is not reported there.
PAPER_R_AT_1 = {'natural': (100.0, 4.6), 'robust': (100.0, 100.0)}  # (benign, adversarial)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  config = _CONFIG.value
  rows = []
  os.makedirs(_RESULTS.value, exist_ok=True)
  for variant, rate in (('natural', 0.0), ('robust', config.adversarial.attack_rate)):
    variant_config = config.copy_and_resolve_references()
    variant_config.adversarial.attack_rate = rate
    workdir = os.path.join(_WORKDIR.value, variant)
    training.train_and_evaluate(variant_config, workdir)
    variant_config.checkpoint = workdir
    results = certification.run(variant_config)
    for row in results['rows']:
      paper = PAPER_R_AT_1[variant] if abs(row['eps'] - 0.01) < 1e-9 else ('-', '-')
      rows.append({
          'model': f'{variant} (P(gamma=1) = {rate:g})', 'eps': row['eps'],
          'benign R@1': 100 * row['recall@1'], 'paper benign R@1': paper[0],
          'adversarial R@1': f'{100 * row["adversarial_recall@1"]:.1f} ± '
                             f'{100 * row["adversarial_recall@1_std"]:.1f}',
          'paper adversarial R@1': paper[1],
          'benign mAP@R': 100 * row['map@r'],
          'adversarial mAP@R': f'{100 * row["adversarial_map@r"]:.1f} ± '
                               f'{100 * row["adversarial_map@r_std"]:.1f}'})
    shutil.copy(os.path.join(workdir, 'certify_attack', 'nn_vs_eps.png'),
                os.path.join(_RESULTS.value, f'nn_vs_eps_{variant}.png'))
  table = report.write_table(os.path.join(_RESULTS.value, 'synthetic'), rows)
  print(table)


if __name__ == '__main__':
  app.run(main)
