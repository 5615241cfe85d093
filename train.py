"""Trains an embedding model from a config file and evaluates retrieval.

  python train.py --config configs/quickstart.py --workdir runs/quickstart
  python train.py --config configs/fmnist_large_triplet.py --config.num_epochs=10 --workdir runs/fm

Any config field can be overridden with --config.<field>=<value>. The workdir receives checkpoints
(a rerun with the same workdir resumes), metrics.jsonl, config.json, results.json and results.md.
A mistake on the command line or in the config (an unknown name, missing data, a bad value)
prints its message alone and exits with status 2; `--traceback` shows the full trace.
All logic lives in jaxcert.training.
"""

from absl import flags
from absl import logging
from ml_collections import config_flags

from jaxcert import cli
from jaxcert import parallel
from jaxcert import training

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file (configs/*.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and results.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  del argv  # cli.run rejects positional arguments
  if not flags.FLAGS['verbosity'].present:  # Orbax logs every save at INFO; -v 0 brings it back.
    logging.set_verbosity(logging.WARNING)
  parallel.initialize_from_config(_CONFIG.value.parallel)  # multi-host: docs/scaling.md
  training.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  cli.run(main)
