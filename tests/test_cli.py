"""The drivers' answer to a user's mistake: its message alone on stderr and exit status 2.

Each case runs train.py or certify.py in a subprocess and fails before any training or
certification starts; each costs the imports of a driver (a few seconds), so only one case runs by
default and the others with `-m slow`. `--traceback` brings the full trace back.
"""

import importlib
import os
import pathlib
import subprocess
import sys

import pytest

from jaxcert import certification

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run_driver(*args, cwd):
  environment = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS='cpu')
  return subprocess.run([sys.executable, str(ROOT / args[0]), *args[1:]], cwd=cwd, env=environment,
                        capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize('args, message', [
    # A config file with get_config's argument ('file.py:variant') is found, then the field fails.
    (('train.py', '--config', 'configs/fmnist_small_tbt.py:reduced', '--workdir', 'runs/x',
      '--config.model.name=vit'),
     "train.py: error: Unknown model 'vit'; valid models: ['linear', 'mlp', 'small_cnn', "
     "'large_cnn', 'resnet18', 'resnet50']."),
    pytest.param(('certify.py', '--config', 'configs/quickstart.py',
                  '--config.checkpoint=runs/missing'),
                 "certify.py: error: No checkpoint directory 'runs/missing/checkpoints'.",
                 marks=pytest.mark.slow),
    pytest.param(('train.py', '--config', 'configs/missing.py', '--workdir', 'runs/x'),
                 "train.py: error: Config file 'configs/missing.py' does not exist",
                 marks=pytest.mark.slow),
    pytest.param(('certify.py', '--config', 'configs/quickstart.py', '--config.model.nme=mlp'),
                 'certify.py: error: Unknown config field \'nme\'. Did you mean "name" instead of '
                 '"nme"?', marks=pytest.mark.slow),
], ids=['unknown-model', 'missing-checkpoint', 'missing-config', 'unknown-field'])
def test_a_users_mistake_prints_its_message_alone_and_exits_2(args, message, tmp_path):
  (tmp_path / 'configs').symlink_to(ROOT / 'configs')
  result = _run_driver(*args, cwd=tmp_path)
  assert result.returncode == 2, result.stderr
  assert result.stderr.startswith(message), result.stderr
  assert 'Traceback' not in result.stderr and len(result.stderr.splitlines()) == 1


def test_traceback_flag_shows_the_full_trace(tmp_path):
  (tmp_path / 'configs').symlink_to(ROOT / 'configs')
  result = _run_driver('certify.py', '--config', 'configs/quickstart.py',
                       '--config.checkpoint=runs/missing', '--traceback', cwd=tmp_path)
  assert result.returncode == 1
  assert 'Traceback (most recent call last)' in result.stderr
  assert "FileNotFoundError: No checkpoint directory 'runs/missing/checkpoints'" in result.stderr
  assert not (tmp_path / 'runs').exists()  # nothing written for a checkpoint that is not there


def test_certification_writes_nothing_before_the_checkpoint_is_found(tmp_path):
  """A wrong checkpoint fails before `<run>/certify_<mode>/config.json` is written, so a mistyped
  --config.checkpoint or a run without checkpoints is left as it was."""
  config = importlib.import_module('configs.quickstart').get_config()
  run = tmp_path / 'run'  # a workdir without checkpoints (a typo, or a run that failed early)
  run.mkdir()
  for checkpoint in (run, tmp_path / 'missing'):
    config.checkpoint = str(checkpoint)
    with pytest.raises(FileNotFoundError, match='No checkpoint directory'):
      certification.run(config)
  assert [path.name for path in tmp_path.iterdir()] == ['run'] and not any(run.iterdir())
