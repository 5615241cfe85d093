"""Helpers several test files share (`import conftest`: pytest puts tests/ on the import path).

* `uniform_images`: a batch of images in [0, 1], optionally with some pixels exactly 0 or 1 (the
  ends of the pixel box, where clipping and interval bounds have their corner cases).
* `with_overrides`: an experiment config with dotted-name fields set, as `--config.a.b=v` does.

It also gives the test run's processes (the pytest-xdist workers and the train.py / certify.py /
bench subprocesses the tests start) one persistent JAX compilation cache, so that a function one
process compiled is loaded by the others (a cold cache cut the default run by about a tenth
here, 714 -> 650 s, and the heaviest files by a fifth; a warm one, on a rerun, by more). Executables are keyed by their program, JAX version,
backend and XLA flags, so a test never loads another's different program. Set
JAX_COMPILATION_CACHE_DIR to use another directory; JAX_ENABLE_COMPILATION_CACHE=false turns it off.
"""

import importlib.util
import os
import tempfile

# JAX evicts (and locks) a size-limited cache with `filelock` (the dev extra); without it the
# tests run uncached rather than warn at every compilation.
if importlib.util.find_spec('filelock') is not None:
  os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
      tempfile.gettempdir(), f'jaxcert-test-compilations-{os.getuid()}'))
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.3')
  os.environ.setdefault('JAX_COMPILATION_CACHE_MAX_SIZE', str(2 ** 30))  # LRU-evicted

import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np


def uniform_images(count: int, shape=(28, 28, 1), seed: int = 0, binary_share: float = 0.0):
  """(count, *shape) float32 images, uniform in [0, 1]; a `binary_share` of the pixels rounded to
  exactly 0 or 1."""
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(count,) + tuple(shape))
  if binary_share:
    ends = rng.uniform(size=images.shape) < binary_share
    images = np.where(ends, np.round(images), images)
  return jnp.asarray(images, jnp.float32)


def with_overrides(config, overrides: dict):
  """`config` with each `{'model.embedding_dim': 8}`-style field set; returns `config`."""
  config.update_from_flattened_dict(overrides)
  return config
