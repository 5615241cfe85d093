"""certify.py mode 'smoothing' (jaxcert.evaluation.smoothing): its files, tables, ablations, errors.

The certificates themselves are attacked in tests/test_smoothing.py; here a briefly trained small
MLP (cheap to smooth) goes through `jaxcert.certification.run` and every reported number is
checked against the per-query TSV it came from.
"""

import csv
import importlib
import json
import os

import numpy as np
import pytest

from configs import embedded_small_margin
from jaxcert import certification
from jaxcert import data
from jaxcert import smoothing
from jaxcert import training
from jaxcert.evaluation import smoothing as smoothing_mode


@pytest.fixture(scope='module')
def trained_inputs(tmp_path_factory):
  """CertifyInputs of the embedded-sample DML recipe on a small MLP after 30 training steps."""
  config = embedded_small_margin.get_config()
  config.model.name = 'mlp'
  config.model.hidden_width = 32
  config.model.num_hidden_layers = 1
  config.model.embedding_dim = 16
  config.num_steps = 30
  config.batch_size = 40
  config.m_per_class = 4
  config.checkpoint_every_steps = 30
  config.progress_bar = False
  config.eval.num_queries = 20
  config.eval.num_candidates = 30
  workdir = str(tmp_path_factory.mktemp('dml'))
  training.train(config, workdir)
  config.checkpoint = workdir
  config.certify.mode = 'smoothing'
  config.smoothing.update(num_samples=5_000, num_select=100, chunk_size=250, batch_size=8,
                          num_queries=6, sigma=0.25)
  return certification.load_inputs(config)


def _with(inputs, **smoothing_fields):
  config = inputs.config.copy_and_resolve_references()
  config.smoothing.update(**smoothing_fields)
  return inputs._replace(config=config)


def _read_tsv(path):
  with open(path, encoding='utf-8') as f:
    return list(csv.DictReader(f, delimiter='\t'))


def test_both_certificates_write_consistent_tsv_table_and_plot(trained_inputs, tmp_path):
  config = _with(trained_inputs, certificate='both').config
  results = certification.run(config, str(tmp_path))  # The whole certify.py path.
  assert set(results['curves']) == set(smoothing.CERTIFICATES)
  for name in ('recall_at_1_r.md', 'recall_at_1_r.tsv', 'recall_at_1_r.png', 'results.json'):
    assert os.path.getsize(tmp_path / name) > 0
  # leave_one_out (the default): the first 6 candidates, each against the other 29.
  query_index = data.query_candidate_split(2000, num_queries=20, num_candidates=30)[1][:6]
  certified_any = False
  for certificate in smoothing.CERTIFICATES:
    rows = _read_tsv(tmp_path / f'smoothing_{certificate}.tsv')
    assert tuple(rows[0]) == smoothing_mode.TSV_COLUMNS
    assert [int(r['index']) for r in rows] == list(query_index)
    radius = np.array([float(r['radius']) for r in rows])
    bound = np.array([float(r['margin_lower_bound']) for r in rows])
    correct = np.array([r['correct'] == '1' for r in rows])
    retrieved_is_label = np.array([r['label'] == r['retrieved_label'] for r in rows])
    np.testing.assert_array_equal(correct, retrieved_is_label)
    assert np.all(correct[radius >= 0])  # A certified query is retrieved correctly.
    if certificate == 'retrievalguard':  # Algorithm 1: abstain exactly when d_lower < 0.
      np.testing.assert_array_equal(radius < 0, bound < -1e-4)
    assert all(float(r['seconds']) > 0 for r in rows)
    certified_any |= bool(np.any(radius >= 0))
    summary = results['curves'][certificate]
    radii = list(config.smoothing.radii)
    expected = smoothing.certified_recall_at_1(radius, correct, radii)
    np.testing.assert_allclose(list(summary['recall@1(r)'].values()), expected, atol=1e-4)
    assert summary['recall@1_smoothed'] == pytest.approx(correct.mean())
    assert summary['rejected'] == pytest.approx(np.mean(correct & (radius < 0)))
  assert certified_any
  assert json.load(open(tmp_path / 'results.json'))['num_queries'] == 6
  table = open(tmp_path / 'recall_at_1_r.md').read()
  assert '| retrievalguard |' in table and '| bisector |' in table


def test_alpha_ablation_recertifies_stored_estimates(trained_inputs, tmp_path):
  first = smoothing_mode.run(_with(trained_inputs, protocol='split'), str(tmp_path / 'first'))
  inputs = _with(trained_inputs, protocol='split', ablation='alpha',
                 ablation_values=(0.001, 0.01, 0.1), estimates_from=str(tmp_path / 'first'))
  results = smoothing_mode.run(inputs, str(tmp_path / 'again'))
  assert set(results['curves']) == {f'retrievalguard alpha={a}' for a in ('0.001', '0.01', '0.1')}
  rows = {a: _read_tsv(tmp_path / 'again' / f'smoothing_retrievalguard_alpha_{a}.tsv')
          for a in ('0.001', '0.01', '0.1')}
  query_index = data.query_candidate_split(2000, num_queries=20, num_candidates=30)[0][:6]
  assert [int(r['index']) for r in rows['0.01']] == list(query_index)  # 'split': the first 6 of Q.
  # The stored estimates reproduce the first run exactly at its alpha.
  assert rows['0.01'] == _read_tsv(tmp_path / 'first' / 'smoothing_retrievalguard.tsv')
  assert results['curves']['retrievalguard alpha=0.01']['recall@1(r)'] == (
      first['curves']['retrievalguard']['recall@1(r)'])
  radius = {a: np.array([float(r['radius']) for r in rows[a]]) for a in rows}
  # The same estimates: a larger alpha has a smaller slack, so every radius is at least as large.
  assert np.all(radius['0.1'] >= radius['0.01']) and np.all(radius['0.01'] >= radius['0.001'])
  with pytest.raises(ValueError, match=r"differs in \['sigma'\]"):
    smoothing_mode.run(_with(inputs, sigma=0.5), str(tmp_path / 'mismatch'))


def test_num_samples_ablation_smooths_once_per_n(trained_inputs, tmp_path):
  inputs = _with(trained_inputs, ablation='num_samples', ablation_values=(500, 5_000),
                 num_queries=2)
  results = smoothing_mode.run(inputs, str(tmp_path))
  assert [c['num_samples'] for c in results['curves'].values()] == [500, 5_000]


@pytest.mark.parametrize('fields, message', [
    (dict(certificate='cohen'), "'retrievalguard', 'bisector', 'both'"),
    (dict(ablation='k'), "'num_samples', 'alpha'"),
    (dict(ablation='alpha'), 'ablation_values'),
    (dict(num_queries=0), 'num_queries'),
    (dict(protocol='all'), "'split', 'leave_one_out'"),
    (dict(sigma=0.0), 'sigma'),
    (dict(alpha=1.5), 'alpha'),
    (dict(num_samples=20), 'num_samples >= '),  # n too small for any positive bound
])
def test_bad_settings_raise_before_any_sampling(trained_inputs, tmp_path, fields, message):
  with pytest.raises(ValueError, match=message):
    smoothing_mode.run(_with(trained_inputs, **fields), str(tmp_path))


SEED000_CONFIGS = ('fmnist_small_margin', 'fmnist_small_gdml', 'mnist_small_margin',
                   'mnist_small_gdml', 'embedded_small_margin', 'embedded_small_gdml',
                   'cub_resnet50_margin', 'cub_resnet50_gdml', 'cars_resnet50_margin',
                   'cars_resnet50_gdml', 'sop_resnet50_margin', 'sop_resnet50_gdml',
                   'fmnist_small_gdml_ablation_n', 'fmnist_small_gdml_ablation_alpha',
                   'fmnist_small_gdml_ablation_k')


@pytest.mark.parametrize('name', SEED000_CONFIGS)
def test_retrievalguard_configs_build_margin_dml_certified_by_smoothing(name):
  module = importlib.import_module(f'configs.{name}')
  config = module.get_config('0.5') if 'gdml' in name and 'ablation' not in name else (
      module.get_config())
  assert config.loss.name == 'margin' and config.model.l2_normalize
  assert config.certify.mode == 'smoothing' and config.smoothing.F == 1.0
  if 'gdml' in name:  # GDML: trained and certified with the same noise.
    assert config.noise_sigma == config.smoothing.sigma > 0
  else:
    assert config.noise_sigma == 0.0
  assert config.smoothing.ablation in smoothing_mode.ABLATIONS


def test_gdml_config_argument_is_checked():
  from configs import fmnist_small_gdml  # pylint: disable=import-outside-toplevel
  assert fmnist_small_gdml.get_config('1.0').noise_sigma == 1.0
  with pytest.raises(ValueError, match='sigma > 0'):
    fmnist_small_gdml.get_config('-0.5')
