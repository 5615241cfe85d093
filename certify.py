"""Certifies (or attacks) a trained embedding model on the query/candidate split of its test set.

  python certify.py --config configs/quickstart.py --config.checkpoint=runs/quickstart
  python certify.py --config configs/fmnist_large_tbt.py --config.checkpoint=runs/fm_tbt \
      --config.certify.mode=ibp --workdir runs/fm_tbt/ibp

`--config` is the config the model was trained with (its model and data fields rebuild the
encoder); `--config.certify.mode` picks ibp, smoothing or attack, and each mode reads its own block
(`--config.ibp.*`, `--config.smoothing.*`, `--config.attack.*`). Results (tables in markdown, TSV
and JSON, PNG plots) go to --workdir, by default <checkpoint>/certify_<mode>. All logic lives in
jaxcert.certification. A mistake on the command line or in the config (an unknown name, missing data
or checkpoint, a bad value) prints its message alone and exits with status 2; `--traceback` shows
the full trace.
"""

from absl import flags
from absl import logging
from ml_collections import config_flags

from jaxcert import certification
from jaxcert import cli
from jaxcert import parallel

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file (configs/*.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None,
                               'Directory for results (default: <checkpoint>/certify_<mode>).')
flags.mark_flags_as_required(['config'])


def main(argv):
  del argv  # cli.run rejects positional arguments
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  parallel.initialize_from_config(_CONFIG.value.parallel)  # multi-host: docs/scaling.md
  certification.run(_CONFIG.value, parallel.primary_workdir(_WORKDIR.value))  # files from process 0


if __name__ == '__main__':
  cli.run(main)
