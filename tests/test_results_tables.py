"""results/'s tables cannot drift from their data: `scripts/results_tables.py --check` passes on the
repository, and fails once a results file or a generated table changes without the other."""

import json
import shutil

import pytest

from scripts import results_tables

RUN = 'kakizaki/fmnist_large_tbt_eq20/results.json'


def test_results_tables_match_their_data():
  assert results_tables.main(['--check']) == 0


def test_check_fails_on_drift_and_rewriting_fixes_it(tmp_path, capsys):
  results = tmp_path / 'results'
  shutil.copytree(results_tables.RESULTS, results, ignore=shutil.ignore_patterns('*.png'))
  check = lambda: results_tables.main(['--check', '--results', str(results)])
  assert check() == 0
  # A new number in a results file: the main table and the index are stale until rewritten.
  run = json.loads((results / RUN).read_text())
  run['cr_recall_qa@40'] = 0.5123
  (results / RUN).write_text(json.dumps(run))
  assert check() == 1
  assert 'kakizaki/README.md differs' in capsys.readouterr().err
  assert results_tables.main(['--results', str(results)]) == 0
  assert check() == 0
  assert '0.165 / 0.287 / 0.512' in (results / 'README.md').read_text()  # the index's headline
  assert '0.022 / 0.165 / 0.287 / 0.512' in (results / 'kakizaki' / 'README.md').read_text()
  # A table edited by hand is stale; the README's own text outside the markers is not.
  readme = results / 'panum' / 'README.md'
  text = readme.read_text()
  readme.write_text(text.replace('4.6 under attack', '4.7 under attack', 1))
  assert check() == 1
  readme.write_text(text.replace('**Not reproduced:', '**Still not reproduced:'))
  assert check() == 0
  readme.write_text(text.replace(results_tables.END, ''))
  with pytest.raises(ValueError, match='must hold the markers once each'):
    check()


def test_commands_certify_as_the_results_were_certified():
  """Results from before certify.py recorded how it certified ran in float32 with Theorem 1's QA
  bound; later ones say so in results.json, and the command repeats it."""
  assert results_tables.certified_as({}) == ('--config.ibp.qa_bound=kakizaki', '--config.ibp.dtype=float32')
  recorded = {'rounding': {'dtype': 'float64'}, 'certified_by': {'method': 'crown_ibp', 'qa_bound': 'linear'}}
  assert results_tables.certified_as(recorded) == (
      '--config.ibp.method=crown_ibp', '--config.ibp.qa_bound=linear', '--config.ibp.dtype=float64')
  recorded['certified_by'].update(method='crown', qa_bound='network', ca_bound='network')
  assert results_tables.certified_as(recorded) == (
      '--config.ibp.method=crown', '--config.ibp.qa_bound=network', '--config.ibp.ca_bound=network',
      '--config.ibp.dtype=float64')
