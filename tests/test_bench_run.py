"""bench/run.py (`python -m bench`) and bench/compare_torch.py: tables, the skip path, and the
PyTorch IBP on the same weights giving jaxcert's bounds (when PyTorch is installed). No timing is
asserted."""

import numpy as np
import pytest

from bench import common
from bench import compare_torch
from bench import run


def test_every_bench_script_is_found_and_has_an_adapter_or_summary_rows():
  scripts = run.bench_scripts()
  assert {'attack', 'ibp', 'smoothing', 'topk', 'train_step'} <= set(scripts)
  assert not {'common', 'run', '__main__', 'compare_torch'} & set(scripts)
  assert set(run.QUICK_ARGV) - {'compare_torch'} <= set(scripts)


def test_tables_show_every_row_with_its_ratio():
  rows = [common.summary_row('smoothing', 'small_cnn', 'n = 128', 'sample', 2e-4, 1e-4),
          common.summary_row('forward', 'small_cnn', 'batch 100', 'image', 1e-4, 1e-4)]
  table = run.rows_table(rows).splitlines()
  assert table[2].startswith('| forward |') and table[3].startswith('| smoothing |')
  assert table[3].endswith('| 2.00 |') and '200 us / sample' in table[3]
  scaling = run.scaling_table([
      {'devices': 1, 'seconds_per_item': {'forward': 2e-3}, 'settings': {'forward': 'batch 8'}},
      {'devices': 2, 'seconds_per_item': {'forward': 1e-3}, 'settings': {'forward': 'batch 8'}},
      {'devices': 4, 'error': 'timed out after 300 s'}])
  assert '| forward | batch 8 | 2 ms (x1.00) | 1 ms (x2.00) |' in scaling
  assert '4 devices failed: timed out' in scaling


def test_comparison_is_skipped_with_a_message_without_torch(monkeypatch):
  monkeypatch.setattr(compare_torch, 'torch_or_reason', lambda: (None, 'PyTorch is not installed'))
  result = compare_torch.main(['--models', 'small_cnn'])
  assert result['skipped'] == 'PyTorch is not installed'
  assert run.comparison_table(result) == 'PyTorch comparison skipped: PyTorch is not installed'


def test_pytorch_ibp_on_the_same_weights_gives_jaxcerts_bounds():
  torch, reason = compare_torch.torch_or_reason()
  if torch is None:
    pytest.skip(reason)
  result = compare_torch.compare_ibp(torch, 'small_cnn', batch_size=4, repeats=1)
  assert result['forward_max_abs_difference'] < 1e-4
  assert result['torch_ibp_max_abs_difference'] <= 1e-5 * result['bound_scale']
  assert result['bound_scale'] > 1.0  # the boxes are not degenerate
  assert np.isfinite(result['torch_ibp_s']) and 'auto_lirpa' in result


def test_ibp_bench_times_both_dtypes_and_the_runner_reads_them():
  from bench import ibp  # pylint: disable=import-outside-toplevel
  result = ibp.main(['--models', 'linear', '--batch_size', '4', '--repeats', '1', '--grid', '20x30',
                     '--k', '3', '--block_size', '10', '--candidate_block_size', '10'])
  for key in ('interval', 'interval_float32_rigorous', 'interval_float64'):
    assert set(result[key]) == {'linear'} and result[key]['linear']['interval_s'] > 0
  for key in ('verification', 'verification_float32_rigorous', 'verification_float64'):
    assert set(result[key]) == {'20x30'} and result[key]['20x30']['verify_s'] > 0
  settings = [row['setting'] for row in run.ADAPTERS['ibp'](result, common)]
  assert settings == ['batch 4', 'batch 4, rigorous float32', 'batch 4, float64',
                      '20x30, k = 3 (rank_bounds)', '20x30, k = 3 (rank_bounds, rigorous float32)',
                      '20x30, k = 3 (rank_bounds, float64)']
  with pytest.raises(SystemExit):
    ibp.main(['--dtypes', 'float16'])


@pytest.mark.slow
def test_crown_bench_times_the_rigorous_mode_beside_round_to_nearest():
  from bench import crown  # pylint: disable=import-outside-toplevel
  result = crown.main(['--models', 'mlp', '--batch_size', '2', '--repeats', '1', '--methods',
                       'crown_ibp', '--outward', '--dtype', 'float32', '--embedding_dim', '8'])
  timings = result['cost']['mlp']
  for method in ('crown_ibp', 'ibp (outward)', 'crown_ibp (outward)'):
    assert timings[method] > 0
  # The rigorous boxes contain the round-to-nearest ones (a slack is subtracted), barely wider.
  assert (timings['crown_ibp_mean_width'] <= timings['crown_ibp (outward)_mean_width']
          < 1.01 * timings['crown_ibp_mean_width'])


@pytest.mark.parametrize('outward', [False, pytest.param(True, marks=pytest.mark.slow)])
def test_crown_bench_times_specification_rows_with_and_without_the_box_pass_intermediates(
    outward):
  from bench import crown  # pylint: disable=import-outside-toplevel
  result = crown.main(['--models', 'mlp', '--batch_size', '2', '--repeats', '1', '--methods',
                       'crown', '--spec_rows', '3', '--dtype', 'float32', '--embedding_dim', '8']
                      + (['--outward'] if outward else []))
  timings = result['cost']['mlp']
  for method in ('crown', 'crown (outward)') if outward else ('crown',):
    assert timings[f'{method} spec 3'] > 0 and timings[f'{method} spec 3 (reused)'] > 0
