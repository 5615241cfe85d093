"""certify.py mode 'attack' (`jaxcert.evaluation.attack`): tables, plots, the certificate check."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from jaxcert import certification
from jaxcert import data
from jaxcert import training
from jaxcert.evaluation import attack as attack_mode


class TinyEncoder(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    del train
    return nn.Dense(4)(nn.tanh(nn.Dense(16)(x.reshape(x.shape[0], -1))))


def _config(**attack):
  config = default.get_config()
  config.eval.num_queries, config.eval.num_candidates = 12, 30
  config.attack.eps = (0.0, 0.3)
  config.attack.num_steps = 4
  config.attack.num_sources = 6
  config.attack.ks = (1, 5)
  config.attack.kinds = ('qa', 'ca', 'nn')
  config.attack.batch_size = 16
  config.attack.update(attack)
  return config


def _inputs(config, checkpoint=None):
  dataset = data.synthetic.two_gaussians(num_train=4, num_test=42, image_size=4, num_channels=1,
                                         sigma=0.2)
  model = TinyEncoder()
  variables = model.init(jax.random.key(0), jnp.zeros((1, 4, 4, 1)))
  test = dataset.test
  labels = np.asarray(test.labels)
  config.checkpoint = checkpoint
  return certification.CertifyInputs(
      config, model, variables, jax.tree_util.Partial(model.apply, variables), dataset,
      certification.LabelledImages(test.images[np.arange(12)], labels[:12]),
      certification.LabelledImages(test.images[np.arange(12, 42)], labels[12:]))


def test_attack_mode_tables_and_plots(tmp_path):
  config = _config(num_repeats=2)
  results = attack_mode.run(_inputs(config), str(tmp_path))
  rows = {(row['kind'], row['eps']): row for row in results['rows']}
  assert set(rows) == {(kind, eps) for kind in ('qa', 'ca', 'nn') for eps in (0.0, 0.3)}
  for kind in ('qa', 'ca'):
    for k in (1, 5):
      assert rows[(kind, 0.0)][f'er_recall@{k}'] == rows[(kind, 0.0)][f'recall@{k}']
      assert rows[(kind, 0.3)][f'er_recall@{k}'] <= rows[(kind, 0.3)][f'recall@{k}']
  assert rows[('nn', 0.0)]['adversarial_recall@1'] == rows[('nn', 0.0)]['recall@1']
  assert rows[('nn', 0.3)]['adversarial_recall@1'] < rows[('nn', 0.3)]['recall@1']
  for name in ('attack.md', 'attack.tsv', 'attack.json', 'er_recall_vs_eps_qa.png',
               'er_recall_vs_eps_ca.png', 'nn_vs_eps.png'):
    assert os.path.getsize(tmp_path / name) > 0
  table = open(tmp_path / 'attack.md').read()
  assert 'ER-Recall@5' in table and '±' in table and 'Algorithm 1' in table
  assert results['ibp_comparison'] is None
  json.dumps(results)  # certification.run stores it as results.json


def _write_ibp(checkpoint, cr, certified_rows):
  directory = checkpoint / 'certify_ibp'
  directory.mkdir(parents=True)
  sweep = {radius: {'qa': {'1': cr, '5': cr}, 'ca': {'1': cr, '5': cr}} for radius in ('0.1', '0.3')}
  (directory / 'results.json').write_text(json.dumps({'eps': 0.3, 'sweep': sweep}))
  lines = ['query\ttest_index\tlabel\tqa@1\tca@1\tqa@5\tca@5']
  lines += [f'{i}\t{i}\t0\t{int(c)}\t{int(c)}\t{int(c)}\t{int(c)}' for i, c in enumerate(certified_rows)]
  (directory / 'ibp_per_query.tsv').write_text('\n'.join(lines) + '\n')


def test_certificates_beside_attacks_and_violations_flagged(tmp_path):
  config = _config(kinds=('qa', 'ca'), eps=(0.3,))
  sound = tmp_path / 'sound'
  _write_ibp(sound, 0.0, [False] * 12)
  results = attack_mode.run(_inputs(config, str(sound)), str(tmp_path / 'out_sound'))
  comparison = results['ibp_comparison']
  assert [row['K'] for row in comparison['rows']] == [1, 5]
  assert all(row['cr_le_er'] for row in comparison['rows'])
  assert comparison['certificate_violations'] == 0 and comparison['checked_queries'] == 12

  # A fake certificate claiming every query is certified: the attack breaks some, and it is caught.
  unsound = tmp_path / 'unsound'
  _write_ibp(unsound, 1.0, [True] * 12)
  results = attack_mode.run(_inputs(config, str(unsound)), str(tmp_path / 'out_unsound'))
  comparison = results['ibp_comparison']
  assert not all(row['cr_le_er'] for row in comparison['rows'])
  assert comparison['certificate_violations'] > 0
  assert 'VIOLATED' in open(tmp_path / 'out_unsound' / 'attack.md').read()

  # Half the queries attacked: CR comes from the per-query file over those (the others are claimed
  # certified but not attacked, so they neither count nor are checked); at eps = 0.1 only the
  # sweep over all 12 queries exists, which is not comparable.
  partial = tmp_path / 'partial'
  _write_ibp(partial, 0.5, [False] * 6 + [True] * 6)
  config = _config(kinds=('qa', 'ca'), eps=(0.1, 0.3), num_queries=6)
  comparison = attack_mode.run(_inputs(config, str(partial)), str(tmp_path / 'out_partial'))[
      'ibp_comparison']
  at = {(row['eps'], row['K']): row for row in comparison['rows']}
  assert at[(0.3, 1)]['cr_qa'] == 0.0 and at[(0.3, 1)]['cr_queries'] == 6
  assert at[(0.3, 1)]['cr_le_er'] is True and at[(0.1, 1)]['cr_le_er'] is None
  assert comparison['certificate_violations'] == 0 and comparison['checked_queries'] == 6


@pytest.mark.parametrize('field,value,match', [
    ('kinds', ('qa', 'bim'), 'kinds'), ('eps', (-0.1,), 'eps'), ('norm', 'l1', 'norm'),
    ('ks', (1, 31), 'ks'), ('num_sources', 0, 'num_sources'), ('method', 'bim', 'method')])
def test_bad_attack_config_is_a_clear_error(field, value, match):
  config = _config(**{field: value})
  with pytest.raises(ValueError, match=match):
    attack_mode.check_attack_config(config.attack, 30)


def test_certify_py_runs_mode_attack(tmp_path):
  config = default.get_config()
  config.model.name = 'mlp'
  config.model.embedding_dim = 8
  config.model.hidden_width = 16
  config.num_steps = 2
  config.progress_bar = False
  config.eval.num_queries, config.eval.num_candidates = 20, 50
  config.eval.ks = (1, 5)
  training.train_and_evaluate(config, str(tmp_path / 'run'))
  config.checkpoint = str(tmp_path / 'run')
  config.certify.mode = 'attack'
  config.attack.update(eps=(0.1,), num_steps=2, num_sources=4, ks=(1, 5), num_queries=5)
  results = certification.run(config)
  assert results['num_queries'] == 5
  saved = json.load(open(tmp_path / 'run' / 'certify_attack' / 'results.json'))
  assert saved['rows'][0]['kind'] == 'qa' and len(saved['rows']) == 2
  assert saved['checkpoint_step'] == 2  # the step of the checkpoint it attacked
