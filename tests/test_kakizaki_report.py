"""scripts/kakizaki_report.py: our numbers beside the paper's, Large rows only; Small rows bare."""

import json
import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'scripts'))

import kakizaki_report  # pylint: disable=g-import-not-at-top,wrong-import-position


def _fake_run(path, model, method, value, checkpoint_step=None, mining='batch_all_mean', resume_from=None,
              rounding=None, seed=0):
  os.makedirs(path / 'certify_ibp')
  os.makedirs(path / 'checkpoints' / '300')
  config = {'num_steps': 300, 'num_epochs': 100, 'method': method, 'model': {'name': model},
            'certified': {'ramp_start_steps': 0, 'ramp_end_steps': 200, 'kappa': 0.5},
            'grad_clip_norm': 10.0, 'init_from': '/runs/triplet_step1500', 'learning_rate': 0.001,
            'lr_decay_epochs': [5.667, 8.5], 'lr_decay_factor': 0.1, 'loss': {'mining': mining},
            'resume_from': resume_from, 'seed': seed}
  (path / 'config.json').write_text(json.dumps(config))
  results = {'eps': 0.2, **{f'recall@{k}': value for k in kakizaki_report.KS},
             **{f'cr_recall_{a}@{k}': value / 2 for a in ('qa', 'ca') for k in kakizaki_report.KS},
             'checkpoint_step': checkpoint_step, **({'rounding': rounding} if rounding else {})}
  (path / 'certify_ibp' / 'results.json').write_text(json.dumps(results))
  return str(path)


def test_tables_show_paper_values_for_large_only(tmp_path):
  large = _fake_run(tmp_path / 'large', 'large_cnn', 'tbt', 0.5, checkpoint_step=200)
  small = _fake_run(tmp_path / 'small', 'small_cnn', 'tbt', 0.4, mining='batch_all', seed=2)
  branch = _fake_run(tmp_path / 'branch', 'large_cnn', 'tbt', 0.3, checkpoint_step=300,
                     resume_from='/runs/tbt@5700', rounding={'dtype': 'float64'})
  text = kakizaki_report.main([f'fmnist:tbt={large}', f'fmnist:tbt={small}', f'fmnist:tbt={branch}',
                              '--out', str(tmp_path / 'tables.md')])
  assert text == (tmp_path / 'tables.md').read_text()
  assert '| FMNIST | Large | TBT | 0.50 (0.62) | 0.50 (0.93) |' in text  # paper Table 1 TBT
  assert '| FMNIST | Large | TBT | 0.25 (0.02) | 0.25 (0.20) |' in text  # paper Table 2 QA
  assert '| FMNIST | Small | TBT | 0.40 | 0.40 | 0.40 | 0.40 |' in text
  # The step certify.py recorded, not the newest checkpoint (300) the run went on to save.
  assert ('300 steps planned, checkpoint of step 200 certified, lr 0.001 x0.1 at epochs 5.667, 8.5, '
          'eps ramp 0-200, kappa 0.5, T over all triplets (Eq. 20), '
          'gradient norm clipped at 10, from triplet_step1500') in text
  assert "T mined 'batch_all' (not Eq. 20's balance)" in text  # Runs from before the change.
  # A branch names the run and step it continued, not the encoder that run started from.
  assert 'gradient norm clipped at 10, branched from tbt@5700 | 0.2000 | float64 |' in text
  assert text.count(', seed ') == 1 and 'clipped at 10, seed 2, from triplet_step1500 |' in text  # 0 unsaid
  # Results without a recorded dtype were certified in float32, before float64 was the default.
  assert text.count('| float32 |') == 2
  # Results from before certify.py recorded the step fall back to the newest checkpoint, saying so.
  assert 'checkpoint of step 300 (newest saved; results.json predates checkpoint_step)' in text


def test_tables_read_results_copies_as_in_the_repo(tmp_path):
  """results/kakizaki/<name>/ holds results.json and train_config.json side by side (and, for results
  from before certify.py recorded the step, newest_checkpoint.json); the report reads that layout."""
  run = _fake_run(tmp_path / 'run', 'large_cnn', 'tbt', 0.5)
  copy = tmp_path / 'copy'
  copy.mkdir()
  (copy / 'results.json').write_text((tmp_path / 'run' / 'certify_ibp' / 'results.json').read_text())
  config = json.loads((tmp_path / 'run' / 'config.json').read_text())
  (copy / 'train_config.json').write_text(json.dumps({**config, 'reconstructed': 'rebuilt for the test'}))
  from_run, from_copy = kakizaki_report.main([f'fmnist:tbt={run}']), kakizaki_report.main([f'fmnist:tbt={copy}'])
  assert from_copy.split('Runs:')[0] == from_run.split('Runs:')[0]  # the same numbers
  assert 'checkpoint of step not recorded' in from_copy and '; config rebuilt for the test' in from_copy
  (copy / 'newest_checkpoint.json').write_text(json.dumps({'step': 300}))
  assert 'checkpoint of step 300 (newest saved' in kakizaki_report.main([f'fmnist:tbt={copy}'])
  with pytest.raises(FileNotFoundError, match='needs certify_ibp/results.json'):
    kakizaki_report.main([f'fmnist:tbt={tmp_path / "nowhere"}'])
