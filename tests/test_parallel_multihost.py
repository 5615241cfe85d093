"""A two-process multi-host job on localhost (CPU backend, gloo) against the one-process run.

`scripts/multihost_localhost.py` starts train.py (then certify.py) as the two processes of one job,
each with one CPU device and only its half of every training batch; the test trains the same
config in this process on one device and checks that the parameters, the retrieval results and the
certification results agree, and that only process 0 wrote the logs and reports.
"""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest

import conftest
from configs import quickstart
from jaxcert import certification
from jaxcert import checkpointing
from jaxcert import parallel
from jaxcert import training
from scripts import multihost_localhost

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_FILE = os.path.join(REPO, 'configs', 'quickstart.py')
OVERRIDES = {
    'model.name': 'linear', 'model.embedding_dim': 16, 'model.l2_normalize': True, 'num_steps': 6, 'batch_size': 20,
    'm_per_class': 4, 'checkpoint_every_steps': 3, 'log_every_steps': 2, 'progress_bar': False,
    'eval.num_queries': 100, 'eval.num_candidates': 100,
}
# Certification on what the single-device run certifies; small enough for a test.
CERTIFY_OVERRIDES = {'ibp.eps': 0.02, 'ibp.eps_sweep': (0.0, 0.02), 'ibp.ks': (1, 10)}


def _flags(overrides):
  return [f'--config.{key}={",".join(map(str, value)) if isinstance(value, tuple) else value}'
          for key, value in overrides.items()]


def _run_two_processes(command, log_dir):
  codes = multihost_localhost.launch(command, 2, log_dir=str(log_dir), timeout_s=300)
  logs = '\n'.join(open(os.path.join(log_dir, f'process_{i}.log')).read()[-3000:] for i in range(2))
  assert codes == [0, 0], logs


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """(config, one-process workdir, two-process workdir), both trained."""
  root = tmp_path_factory.mktemp('multihost')
  one, two = str(root / 'one'), str(root / 'two')
  _run_two_processes(['train.py', '--config', CONFIG_FILE, '--workdir', two,
                      '--config.parallel.num_devices=-1'] + _flags(OVERRIDES), root / 'train_logs')
  config = conftest.with_overrides(quickstart.get_config(), OVERRIDES)
  training.train_and_evaluate(config, one)
  return config, one, two


def test_two_processes_train_like_one(trained):
  config, one, two = trained
  with open(os.path.join(one, 'results.json')) as f:
    expected = json.load(f)
  with open(os.path.join(two, 'results.json')) as f:
    got = json.load(f)
  assert got.keys() == expected.keys()
  for name in expected:
    for metric, value in expected[name].items():
      assert got[name][metric] == pytest.approx(value, abs=1e-4), (name, metric)
  params_one = jax.tree.leaves(checkpointing.load_trained(config, one)[1])
  params_two = jax.tree.leaves(checkpointing.load_trained(config, two)[1])
  for a, b in zip(params_one, params_two):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=2e-5)
  # Process 0 alone wrote the log: one line per logged step, not two.
  lines = [json.loads(line) for line in open(os.path.join(two, 'metrics.jsonl'))]
  expected_lines = [json.loads(line) for line in open(os.path.join(one, 'metrics.jsonl'))]
  assert [l['step'] for l in lines] == [l['step'] for l in expected_lines]
  np.testing.assert_allclose([l['loss'] for l in lines], [l['loss'] for l in expected_lines],
                             rtol=1e-4)
  assert sorted(os.listdir(os.path.join(two, 'checkpoints'))) == ['3', '6']


def test_two_processes_certify_like_one(trained, tmp_path):
  mode = 'ibp'
  if mode not in certification.MODES:
    pytest.skip(f'certification mode {mode!r} is not registered yet (MODES: {sorted(certification.MODES)})')
  config, one, two = trained
  certify_overrides = {**OVERRIDES, **CERTIFY_OVERRIDES, 'certify.mode': mode}
  _run_two_processes(['certify.py', '--config', CONFIG_FILE, f'--config.checkpoint={two}',
                      '--workdir', str(tmp_path / 'two')] + _flags(certify_overrides),
                     tmp_path / 'certify_logs')
  config = conftest.with_overrides(quickstart.get_config(), certify_overrides)
  config.checkpoint = one
  certification.run(config, str(tmp_path / 'one'))
  with open(tmp_path / 'one' / 'results.json') as f:
    expected = json.load(f)
  with open(tmp_path / 'two' / 'results.json') as f:
    got = json.load(f)
  assert expected and _close(expected, got), (expected, got)


def _close(a, b) -> bool:
  """Nested JSON values equal up to 1e-4 for numbers (timings excepted)."""
  if isinstance(a, dict):
    return a.keys() == b.keys() and all(
        'seconds' in str(k) or k.endswith('_s') or _close(a[k], b[k]) for k in a)
  if isinstance(a, list):
    return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
  if isinstance(a, float) or isinstance(b, float):
    return abs(a - b) <= 1e-4 * max(1.0, abs(a))
  return a == b


def test_missing_or_partial_coordinator_raises(monkeypatch):
  for name in ('JAXCERT_COORDINATOR', 'JAXCERT_NUM_PROCESSES', 'JAXCERT_PROCESS_ID'):
    monkeypatch.delenv(name, raising=False)
  with pytest.raises(ValueError, match='needs the coordinator address'):
    parallel.initialize_distributed(num_processes=2, process_id=0)
  with pytest.raises(ValueError, match='needs the coordinator address'):
    parallel.initialize_from_config(ml_collections.ConfigDict(
        {'coordinator_address': None, 'num_processes': 2, 'process_id': 1}))
  monkeypatch.setenv('JAXCERT_PROCESS_ID', '0')  # the environment alone names a job too
  with pytest.raises(ValueError, match="coordinator=None, num_processes=None, process_id=0"):
    parallel.initialize_from_config(quickstart.get_config().parallel)
  with pytest.raises(ValueError, match=r'process_id 2 is outside \[0, 2\)'):
    parallel.initialize_distributed('localhost:1234', 2, 2)
  monkeypatch.delenv('JAXCERT_PROCESS_ID')
  assert not parallel.initialize_from_config(quickstart.get_config().parallel)


@pytest.mark.skipif(any(v in os.environ for v in ('SLURM_JOB_ID', 'OMPI_COMM_WORLD_SIZE',
                                                  'TPU_WORKER_HOSTNAMES')),
                    reason='a cluster environment: auto-detection would really join it')
def test_auto_coordinator_outside_a_cluster_raises():
  with pytest.raises(RuntimeError, match="found none here; give config.parallel.coordinator_address"):
    parallel.initialize_distributed(parallel.AUTO_COORDINATOR)


def test_launcher_reports_a_failing_process(tmp_path):
  script = tmp_path / 'fail_on_one.py'
  script.write_text('import os, sys\nsys.exit(3 if os.environ["JAXCERT_PROCESS_ID"] == "1" else 0)\n')
  codes = multihost_localhost.launch([str(script)], 2, log_dir=str(tmp_path / 'logs'))
  assert codes == [0, 3]
  assert multihost_localhost.main(['--log_dir', str(tmp_path / 'logs'), '--', str(script)]) == 1
