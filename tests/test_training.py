"""Training loop: exact resume after a kill, NaN stop, bad configs, end-to-end quick run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import conftest
from configs import quickstart
from jaxcert import certification
from jaxcert import checkpointing
from jaxcert import models
from jaxcert import report
from jaxcert import training

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(**overrides):
  config = quickstart.get_config()
  config.model.name = 'small_cnn'
  config.model.embedding_dim = 16
  config.num_steps = 12
  config.batch_size = 20
  config.m_per_class = 4
  config.checkpoint_every_steps = 4
  config.log_every_steps = 2
  config.progress_bar = False
  config.eval.num_queries = 200
  config.eval.num_candidates = 300
  return conftest.with_overrides(config, overrides)


def final_params(workdir, config):
  model, variables, _, _ = checkpointing.load_trained(config, workdir)
  del model
  return jax.tree.leaves(variables)


def test_train_and_evaluate_writes_results(tmp_path):
  config = tiny_config()
  results = training.train_and_evaluate(config, str(tmp_path))
  assert set(results) == {'model', 'raw_pixels'}
  for row in results.values():
    assert {'recall@1', 'recall@10', 'recall@20', 'recall@40', 'map@r'} <= set(row)
    assert 0.0 <= row['recall@1'] <= row['recall@10'] <= row['recall@40'] <= 1.0
  lines = [json.loads(l) for l in open(tmp_path / 'metrics.jsonl')]
  assert [l['step'] for l in lines] == [0, 2, 3, 4, 6, 7, 8, 10, 11]
  assert all(np.isfinite(l['loss']) and l['images_per_second'] > 0 for l in lines)
  assert json.load(open(tmp_path / 'results.json')) == results
  assert '| model |' in open(tmp_path / 'results.md').read()
  assert (tmp_path / 'training_curves.png').stat().st_size > 0
  # The comparison script overlays runs; a directory without metrics.jsonl is a clear error.
  script = [sys.executable, os.path.join(REPO, 'scripts/plot_training.py')]
  done = subprocess.run(script + [str(tmp_path), str(tmp_path), '--out', str(tmp_path / 'both.png'),
                                  '--metrics', 'loss,grad_norm'],
                        cwd=REPO, capture_output=True, text=True, check=True)
  assert 'grad_norm, loss for 2 run(s)' in done.stdout and (tmp_path / 'both.png').exists()
  missing = subprocess.run(script + [str(tmp_path / 'nowhere'), '--out', str(tmp_path / 'x.png')],
                           cwd=REPO, capture_output=True, text=True)
  assert missing.returncode == 2 and 'metrics.jsonl does not exist' in missing.stderr


def test_resume_after_kill_gives_same_parameters(tmp_path):
  """Kills a training process (SIGKILL) after its first checkpoint, restarts it, and compares the
  final parameters with those of an uninterrupted run."""
  config = tiny_config(num_steps=40, checkpoint_every_steps=10)
  uninterrupted = tmp_path / 'uninterrupted'
  training.train(config, str(uninterrupted))

  killed = tmp_path / 'killed'
  overrides = ['--config.num_steps=40', '--config.checkpoint_every_steps=10', '--config.batch_size=20',
               '--config.m_per_class=4', '--config.model.embedding_dim=16', '--config.progress_bar=False',
               '--config.eval.num_queries=200', '--config.eval.num_candidates=300', '--config.log_every_steps=2']
  command = [sys.executable, os.path.join(REPO, 'train.py'), '--config', os.path.join(REPO, 'configs/quickstart.py'),
             '--workdir', str(killed)] + overrides
  process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  checkpoint_dir = killed / 'checkpoints'
  deadline = time.time() + 300
  while time.time() < deadline and process.poll() is None:
    steps = [int(p) for p in os.listdir(checkpoint_dir) if p.isdigit()] if checkpoint_dir.exists() else []
    if any(s >= 10 for s in steps):
      break
    time.sleep(0.05)
  assert process.poll() is None, (
      'training finished before it could be killed; ' + process.stderr.read().decode()[-2000:])
  process.send_signal(signal.SIGKILL)
  process.wait()
  mngr = checkpointing.manager(str(checkpoint_dir))
  interrupted_at = mngr.latest_step()
  mngr.close()
  assert interrupted_at is not None and interrupted_at < 40

  training.train(config, str(killed))
  for a, b in zip(final_params(str(uninterrupted), config), final_params(str(killed), config)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # The resumed run's log holds each step once, as the uninterrupted run's does.
  steps = lambda run: [json.loads(line)['step'] for line in open(run / 'metrics.jsonl')]
  assert steps(killed) == steps(uninterrupted)


def test_resume_logs_each_step_once(tmp_path):
  """Steps logged after the checkpoint a run resumes from are logged again by the resumed run; the
  log keeps one record per step (the curves in training_curves.png would double back otherwise)."""
  config = tiny_config()
  training.train(config, str(tmp_path))
  first = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  shutil.rmtree(tmp_path / 'checkpoints' / '12')  # back to step 8's checkpoint, as if killed before the last save
  training.train(config, str(tmp_path))
  second = [json.loads(line) for line in open(tmp_path / 'metrics.jsonl')]
  assert [r['step'] for r in second] == [r['step'] for r in first] == [0, 2, 3, 4, 6, 7, 8, 10, 11]
  assert second[:6] == first[:6]  # the records before the checkpoint are kept as they were


def test_branch_from_another_runs_checkpoint(tmp_path):
  """config.resume_from='DIR@STEP' restores that run's whole train state: with the same config the
  branch ends on the run's own final parameters, bit for bit; with another loss it trains on from
  there, its log holding the source's records before the branch step."""
  config = tiny_config()
  source = tmp_path / 'source'
  training.train(config, str(source))
  same = tmp_path / 'same'
  training.train(tiny_config(resume_from=f'{source}@8'), str(same))
  for a, b in zip(final_params(str(source), config), final_params(str(same), config)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  other = tmp_path / 'other'
  training.train(tiny_config(**{'resume_from': f'{source}@8', 'loss.margin': 0.3}), str(other))
  assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
             zip(final_params(str(source), config), final_params(str(other), config)))
  records = lambda run: [json.loads(line) for line in open(run / 'metrics.jsonl')]
  assert [r['step'] for r in records(other)] == [r['step'] for r in records(source)]
  assert records(other)[:6] == records(source)[:6]  # steps 0-7 come from the source
  assert records(other)[6] != records(source)[6]  # step 8 on: the branch's own loss


def test_checkpoint_names_split_at_the_last_at_sign():
  assert checkpointing.split_step('runs/tbt@5700') == ('runs/tbt', 5700)
  assert checkpointing.split_step('runs/tbt') == ('runs/tbt', None)
  assert checkpointing.split_step('/home/me@host/run') == ('/home/me@host/run', None)
  assert checkpointing.split_step('/home/me@host/run@40') == ('/home/me@host/run', 40)


@pytest.fixture(scope='module')
def branch_source(tmp_path_factory):
  """One tiny run (checkpoints 8 and 12) that the branch-error cases read and never write."""
  source = tmp_path_factory.mktemp('source')
  training.train(tiny_config(), str(source))
  return source


@pytest.mark.parametrize('resume_from,overrides,error,message', [
    ('{source}@5', {}, ValueError, r'no checkpoint of step 5; it holds steps \[8, 12\]'),
    ('{source}@last', {}, ValueError, 'DIR@STEP with STEP a step number'),
    ('{source}/nowhere', {}, FileNotFoundError, 'No checkpoint directory'),
    ('{source}', {'grad_clip_norm': 1.0}, ValueError, 'does not fit this config.*config.init_from'),
])
def test_branch_errors_say_what_to_do(tmp_path, branch_source, resume_from, overrides, error,
                                      message):
  config = tiny_config(resume_from=resume_from.format(source=branch_source), **overrides)
  with pytest.raises(error, match=message):
    training.train(config, str(tmp_path / 'branch'))


def test_kept_checkpoints_load_and_certify_by_step(tmp_path):
  """checkpoint_keep_every_steps keeps the multiples besides the newest two; 'DIR@STEP' loads,
  certifies (into certify_ibp_step<STEP>, recording the step) and starts training from one."""
  config = tiny_config(checkpoint_every_steps=2, checkpoint_keep_every_steps=4)
  run = tmp_path / 'run'
  training.train(config, str(run))
  assert sorted(int(p) for p in os.listdir(run / 'checkpoints') if p.isdigit()) == [4, 8, 10, 12]
  _, at_4, _, step = checkpointing.load_trained(config, f'{run}@4')
  assert step == 4
  assert any(not np.array_equal(np.asarray(a), np.asarray(b))
             for a, b in zip(jax.tree.leaves(at_4), final_params(str(run), config)))
  with pytest.raises(ValueError, match=r'no checkpoint of step 6; it holds steps \[4, 8, 10, 12\]'):
    checkpointing.load_trained(config, f'{run}@6')

  config.checkpoint = f'{run}@4'
  config.ibp.eps_sweep = (0.05,)
  certification.run(config)
  assert json.load(open(run / 'certify_ibp_step4' / 'results.json'))['checkpoint_step'] == 4

  frozen = tiny_config(init_from=f'{run}@4', num_steps=1, learning_rate=0.0)  # step 4's encoder as is
  training.train(frozen, str(tmp_path / 'frozen'))
  for a, b in zip(jax.tree.leaves(at_4), final_params(str(tmp_path / 'frozen'), frozen)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resume_after_a_torn_log_line(tmp_path):
  """A run killed while writing a metrics line leaves half a record without its newline: the
  resumed run drops it and logs on; a broken line elsewhere is an error naming the line."""
  config = tiny_config()
  training.train(config, str(tmp_path))
  log = tmp_path / 'metrics.jsonl'
  first = log.read_text().splitlines(keepends=True)
  shutil.rmtree(tmp_path / 'checkpoints' / '12')
  log.write_text(''.join(first[:6]) + first[6][:9])  # cut inside the record of step 8
  training.train(config, str(tmp_path))
  assert [r['step'] for r in report.read_jsonl(str(log))] == [0, 2, 3, 4, 6, 7, 8, 10, 11]
  log.write_text(first[0] + first[1][:9] + '\n' + first[2])
  with pytest.raises(ValueError, match='line 2, is not a JSON record'):
    report.read_jsonl(str(log))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  # A good learning rate for 7 steps, then 1e-3 * 1e30: diverges after the checkpoint of step 5.
  steps_per_epoch = training.steps_per_epoch(tiny_config(), 6000)
  config = tiny_config(num_steps=30, checkpoint_every_steps=5, lr_decay_epochs=(7 / steps_per_epoch,),
                       lr_decay_factor=1e30)
  with pytest.raises(training.TrainingDivergedError, match='last good checkpoint'):
    training.train(config, str(tmp_path))
  mngr = checkpointing.manager(str(tmp_path / 'checkpoints'))
  assert mngr.latest_step() == 5
  mngr.close()
  # The checkpoint left behind holds finite parameters.
  _, variables, _, _ = checkpointing.load_trained(config, str(tmp_path))
  assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(variables))


def test_dead_encoder_stops_as_collapsed(tmp_path):
  """An encoder whose first-layer ReLUs are all dead maps every image to its last bias: the triplet
  loss sits at its margin with a gradient of exactly 0, which the loop must report, not train on."""
  config = tiny_config(num_steps=30, collapse_patience_steps=5)
  state = training.create_train_state(config, models.build_model(config.model), (28, 28, 1), 6000,
                                      10)
  model_params = dict(state.params['model'])
  model_params['conv1'] = {**model_params['conv1'], 'bias': model_params['conv1']['bias'] - 1e3}
  mngr = checkpointing.manager(str(tmp_path / 'dead' / 'checkpoints'))
  checkpointing.save(mngr, 1, state.replace(params={**state.params, 'model': model_params}))
  mngr.wait_until_finished()
  mngr.close()
  config.init_from = str(tmp_path / 'dead')
  with pytest.raises(training.TrainingCollapsedError, match='exactly 0 .* for 5 steps .since step 0'):
    training.train(config, str(tmp_path / 'run'))


def test_collapse_detector_needs_consecutive_zero_gradients_at_positive_loss():
  detector = training._CollapseDetector(patience=3)
  for step, (loss, grad_norm) in enumerate([(1., 0.), (1., 0.), (1., 2.), (0., 0.), (0., 0.), (0., 0.),
                                            (1., 0.), (1., 0.)]):
    detector.update(step, {'loss': loss, 'grad_norm': grad_norm}, 'ckpt')  # never 3 in a row
  with pytest.raises(training.TrainingCollapsedError, match='since step 6'):
    detector.update(8, {'loss': 1., 'grad_norm': 0.}, 'ckpt')
  training._CollapseDetector(patience=0).update(0, {'loss': 1., 'grad_norm': 0.}, 'ckpt')  # off


def test_gradient_clipping_bounds_the_global_norm_before_adam():
  """With grad_clip_norm = 1, a gradient 1000 u (|u| = 1) is clipped to u, so Adam's steps after
  (1000 u, u) equal its steps after (u, u) without clipping; unclipped they differ."""
  params = {'model': {'w': jax.numpy.zeros(4)}, 'objective': {}}
  unit = {'model': {'w': jax.numpy.full(4, 0.5)}, 'objective': {}}
  big = jax.tree.map(lambda g: 1000 * g, unit)
  def updates(config, gradients):
    tx = training.make_optimizer(config, 6000)
    opt_state = tx.init(params)
    for g in gradients:
      update, opt_state = tx.update(g, opt_state, params)
    return np.asarray(update['model']['w'])
  clipped = updates(tiny_config(grad_clip_norm=1.0), [big, unit])
  np.testing.assert_allclose(clipped, updates(tiny_config(), [unit, unit]), rtol=1e-6)
  assert not np.allclose(updates(tiny_config(), [big, unit]), clipped, rtol=1e-2)
  with pytest.raises(ValueError, match='grad_clip_norm must be > 0'):
    training.make_optimizer(tiny_config(grad_clip_norm=0.0), 6000)


@pytest.mark.parametrize('key,value,message', [
    ('data.name', 'imagenet9', 'embedded'),
    ('model.name', 'vgg', 'small_cnn'),
    ('loss.name', 'arcface', 'triplet'),
    ('method', 'magic', 'metric'),
    ('sampler', 'random', 'm_per_class'),
])
def test_unknown_names_list_valid_ones(tmp_path, key, value, message):
  config = tiny_config(**{key: value})
  with pytest.raises(ValueError, match=message):
    training.train_and_evaluate(config, str(tmp_path))


def test_missing_data_directory_says_how_to_get_it(tmp_path):
  config = tiny_config(**{'data.name': 'idx', 'data.data_dir': str(tmp_path / 'nowhere')})
  with pytest.raises(FileNotFoundError, match='dataset-fashion-mnist'):
    training.train_and_evaluate(config, str(tmp_path / 'run'))


def test_wrong_image_shape_for_model(tmp_path):
  config = tiny_config(**{'data.name': 'synthetic'})
  config.model.name = 'resnet18'
  config.model.num_channels = 3
  with pytest.raises(ValueError, match='channel'):
    training.train_and_evaluate(config, str(tmp_path))


def test_load_trained_reads_the_encoder_whatever_the_training_settings(tmp_path):
  """A run trained with gradient clipping (another optimiser state) loads under a config without
  it, as certify.py does with an experiment's config."""
  clipped = tiny_config(num_steps=4, grad_clip_norm=1.0)
  training.train(clipped, str(tmp_path))
  for a, b in zip(final_params(str(tmp_path), clipped), final_params(str(tmp_path), tiny_config())):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(ValueError, match='does not match config.model'):
    checkpointing.load_trained(tiny_config(**{'model.embedding_dim': 8}), str(tmp_path))


def test_load_trained_without_checkpoint_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match='Train first'):
    checkpointing.load_trained(tiny_config(), str(tmp_path / 'empty'))
