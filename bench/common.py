"""Helpers shared by the benchmarks: timing, the environment they ran in, a forward-pass baseline.

Every benchmark reports its hot path as a ratio to a plain forward pass of an
encoder measured in the same run (DESIGN.md), so numbers from different
machines stay comparable; `forward_baseline` times that pass.
"""

import argparse
import os
import statistics
import time
from collections.abc import Callable

import jax
import numpy as np

from jaxcert import models


def parse_model_names(parser: argparse.ArgumentParser, text: str, valid) -> list[str]:
  """The comma-separated model names of `text`; a parser error listing `valid` on unknown ones."""
  names = [name for name in text.split(',') if name]
  unknown = [name for name in names if name not in valid]
  if unknown:
    parser.error(f'unknown models {unknown}; valid: {sorted(valid)}')
  return names


def median_seconds(fn: Callable, *, repeats: int = 5, warmup: int = 1) -> float:
  """Median wall time of `fn()` over `repeats` calls, after `warmup` calls (compilation).

  Each call is waited for with `jax.block_until_ready`, so asynchronous dispatch
  does not hide device time.
  """
  if repeats < 1:
    raise ValueError(f'repeats must be >= 1, got {repeats}.')
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def environment() -> dict:
  """What a timing depends on: jax version, backend, devices, XLA_FLAGS, host CPU count."""
  return {
      'jax_version': jax.__version__,
      'backend': jax.default_backend(),
      'devices': [str(device) for device in jax.devices()],
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'cpu_count': os.cpu_count(),
  }


def print_environment(env: dict) -> None:
  """One line with the fields of `environment()`."""
  print(f'jax {env["jax_version"]}   backend {env["backend"]}   devices {env["devices"]}   '
        f'XLA_FLAGS={env["xla_flags"]!r}   host CPUs {env["cpu_count"]}', flush=True)


def forward_baseline(model_name: str, batch: int, image_shape, *, embedding_dim: int = 128,
                     repeats: int = 5, seed: int = 0) -> float:
  """Median seconds of one jitted forward pass of encoder `model_name` on `batch` random images.

  Args:
    model_name: one of `jaxcert.models.MODEL_NAMES`.
    batch: images per pass.
    image_shape: (height, width, channels).
    embedding_dim: embedding size of the encoder.
    repeats: timed passes (the median is kept).
    seed: seed of the weights and the images.

  Returns:
    Seconds per pass (compilation excluded); weights enter as runtime arguments.
  """
  model = models.get_model(model_name, embedding_dim=embedding_dim)
  variables = models.init_variables(model, jax.random.key(seed), tuple(image_shape))
  images = jax.device_put(np.random.default_rng(seed).uniform(
      size=(batch,) + tuple(image_shape)).astype(np.float32))
  forward = jax.jit(model.apply)
  return median_seconds(lambda: forward(variables, images), repeats=repeats)


def summary_row(hot_path: str, model: str, setting: str, item: str, seconds_per_item: float,
                forward_seconds_per_image: float) -> dict:
  """One row of the `python -m bench` table: a hot path's time per item against a forward pass.

  A bench script whose `main` returns `{'summary_rows': [summary_row(...), ...], ...}` joins the
  table without an adapter in bench/run.py. `forward_seconds_per_image` is a plain forward pass of
  the same encoder measured in the same run; `ratio` is the hot path's cost in forward passes.
  """
  return {'hot_path': hot_path, 'model': model, 'setting': setting, 'item': item,
          'seconds_per_item': seconds_per_item,
          'forward_seconds_per_image': forward_seconds_per_image,
          'ratio': seconds_per_item / forward_seconds_per_image}
