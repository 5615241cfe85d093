"""What the drivers (train.py, certify.py) share: a user's mistake is one message and exit status 2.

A user's mistake is a bad command line (an unknown flag or config field, a value of the wrong type,
a missing required flag, a config file that does not exist, a positional argument) or an error the library raises for bad input: `ValueError` (an
unknown dataset, model, loss or mode name, with the valid ones; a value out of range) or
`FileNotFoundError` / `NotADirectoryError` (missing data, a run directory without checkpoints).
`run(main)` prints such an error's message alone to stderr, as `<program>: error: <message>`, and
exits with status 2 (the status of a usage error, as argparse uses it); `--traceback` re-raises it
with its full trace instead. Every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from absl import app
from absl import flags
from ml_collections import config_flags

USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError)
USAGE_ERROR_STATUS = 2
TRACEBACK_FLAG = 'traceback'

_TRACEBACK = flags.DEFINE_bool(
    TRACEBACK_FLAG, False,
    "Show the full Python traceback of a user's mistake (an unknown name, missing data or "
    'checkpoint, a bad value) instead of its message alone.')


def _traceback_asked(argv: list[str]) -> bool:
  """Whether the command line asks for --traceback (read directly: flags may not have parsed)."""
  return any(arg in (f'--{TRACEBACK_FLAG}', f'--{TRACEBACK_FLAG}=true', f'--{TRACEBACK_FLAG}=True',
                     f'--{TRACEBACK_FLAG}=1') for arg in argv[1:])


def exit_with_message(program: str, error: BaseException) -> None:
  """Prints `<program>: error: <message>` to stderr and exits with USAGE_ERROR_STATUS."""
  print(f'{os.path.basename(program)}: error: {error}', file=sys.stderr)
  sys.exit(USAGE_ERROR_STATUS)


def _check_config_file(config_flag: str) -> None:
  """FileNotFoundError naming the path if the config file of flag `config_flag` does not exist.

  (ml_collections defers that failure to the first use of the config, with a message that does
  not name the file.)
  """
  if config_flag not in flags.FLAGS or flags.FLAGS[config_flag].present == 0:
    return
  # ml_collections reads 'file.py:argument' as the file and get_config's argument.
  path = config_flags.get_config_filename(flags.FLAGS[config_flag]).split(':', 1)[0]
  if path and not os.path.isfile(path):
    raise FileNotFoundError(f'Config file {path!r} does not exist; the configs are in configs/, '
                            'e.g. --config configs/quickstart.py.')


def parse_flags(argv: list[str], config_flag: str = 'config') -> list[str]:
  """absl's flag parsing, with a bad flag or a missing config file reported as a user's mistake."""
  try:
    remaining = flags.FLAGS(argv)
    _check_config_file(config_flag)
    return remaining
  except (flags.Error, FileNotFoundError, AttributeError, KeyError) as error:
    if _traceback_asked(argv):
      raise
    if isinstance(error, (AttributeError, KeyError)):  # ml_collections: --config.<unknown field>
      error = ValueError(f'Unknown config field {_innermost_message(error)} '
                         '(configs/default.py documents every field).')
    exit_with_message(argv[0], error)
    raise  # not reached: exit_with_message exits


def _innermost_message(error: BaseException) -> str:
  """The text of an exception wrapped in exceptions (ml_collections nests a KeyError twice)."""
  message = error
  while isinstance(message, BaseException) and message.args:
    message = message.args[0]
  return '. '.join(line.strip() for line in str(message).splitlines() if line.strip())


def run(main: Callable[[list[str]], None]) -> None:
  """`absl.app.run(main)`, with users' mistakes reported as the module docstring says."""

  def main_reporting_user_errors(argv: list[str]) -> None:
    if len(argv) > 1:
      error = ValueError(f'Unexpected arguments: {argv[1:]} (every setting is a flag, e.g. '
                         '--config.num_epochs=5).')
      if _TRACEBACK.value:
        raise error
      exit_with_message(argv[0], error)
    try:
      main(argv)
    except USER_ERRORS as error:
      if _TRACEBACK.value:
        raise
      exit_with_message(argv[0], error)

  app.run(main_reporting_user_errors, flags_parser=parse_flags)
