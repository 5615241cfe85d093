"""Benchmark: one jitted training step against a plain forward pass of the same encoder and batch.

Builds the train state and step exactly as `train.py` does (`jaxcert.training`), times the step on a
fixed batch of random images of the model's shape, and prints training images/s, the ratio step
time / forward time (forward + backward + Adam is typically 3-4x) and, for every method variant,
the ratio of its step time to the plain triplet step's ('metric') measured in the same run: the
cost of a certified objective over plain metric learning. Variants (`VARIANTS`) are methods with
config overrides, e.g. 'certified_triplet+sabr'.

  python bench/train_step.py
  python bench/train_step.py --models small_cnn,large_cnn --batch_size 100 --methods metric
  python bench/train_step.py --models small_cnn --methods metric,tbt,certified_triplet,certified_triplet+bn
"""

import argparse
import pathlib
import sys

import jax
import numpy as np

if __package__ in (None, ''):  # Run as `python bench/train_step.py`: import `bench` from the repo root.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from bench import common  # pylint: disable=wrong-import-position
from configs import default  # pylint: disable=wrong-import-position
from jaxcert import models  # pylint: disable=wrong-import-position
from jaxcert import objectives  # pylint: disable=wrong-import-position
from jaxcert import training  # pylint: disable=wrong-import-position

IMAGE_SHAPES = {'resnet18': (32, 32, 3), 'resnet50': (32, 32, 3)}  # others: 28 x 28 x 1

_CERTIFIED_TRIPLET = {'loss.mining': 'batch_all_mean', 'grad_clip_norm': 10.0}
# name -> (method, config overrides 'section.field' -> value): what --methods accepts.
VARIANTS = {name: (name, {}) for name in objectives.METHODS} | {
    'tbt': ('tbt', {'loss.mining': 'batch_all_mean'}),  # Eq. 20's balance, as configs/kakizaki.py
    'certified_triplet': ('certified_triplet', _CERTIFIED_TRIPLET),
    'certified_triplet+distance': ('certified_triplet', {**_CERTIFIED_TRIPLET,
                                                         'certified.qa_bound': 'distance'}),
    'certified_triplet+bn': ('certified_triplet', {**_CERTIFIED_TRIPLET, 'model.batch_norm': True,
                                                   'model.ibp_init': True}),
    'certified_triplet+bn+warmup': ('certified_triplet', {
        **_CERTIFIED_TRIPLET, 'model.batch_norm': True, 'model.ibp_init': True,
        'certified.warmup_weight': 0.5}),
    'certified_triplet+sabr': ('certified_triplet', {**_CERTIFIED_TRIPLET,
                                                     'certified.adversarial': 'sabr'}),
    'certified_triplet+mtl_ibp': ('certified_triplet', {**_CERTIFIED_TRIPLET,
                                                        'certified.adversarial': 'mtl_ibp'}),
    'certified_triplet+ranking': ('certified_triplet', {**_CERTIFIED_TRIPLET,
                                                        'certified.triplets': 'ranking'}),
    'certified_triplet+crown_ibp2': ('certified_triplet', {
        **_CERTIFIED_TRIPLET, 'certified.triplets': 'ranking', 'certified.crown_ibp_rows': 2}),
    'certified_triplet+crown_ibp4': ('certified_triplet', {
        **_CERTIFIED_TRIPLET, 'certified.triplets': 'ranking', 'certified.crown_ibp_rows': 4}),
}


def variant_config(model_name: str, variant: str, batch_size: int):
  """The default config with `model_name`, `batch_size` and the variant's method and overrides."""
  if variant not in VARIANTS:
    raise ValueError(f'Unknown method variant {variant!r}; valid: {sorted(VARIANTS)}.')
  method, overrides = VARIANTS[variant]
  config = default.get_config()
  config.model.name = model_name
  config.method = method
  config.batch_size = batch_size
  for path, value in overrides.items():
    section, field = path.rsplit('.', 1) if '.' in path else ('', path)
    target = config[section] if section else config
    target[field] = value
  return config


def time_train_step(model_name: str, *, batch_size: int, method: str, repeats: int,
                    seed: int = 0) -> dict:
  """Median seconds of a train step and of a forward pass on one batch of `batch_size` images.

  `method` names a variant (`VARIANTS`): a training method, possibly with config overrides.
  """
  config = variant_config(model_name, method, batch_size)
  image_shape = IMAGE_SHAPES.get(model_name, (28, 28, 1))
  num_classes = 10
  rng = np.random.default_rng(seed)
  images = jax.device_put(rng.uniform(size=(batch_size,) + image_shape).astype(np.float32))
  labels = jax.device_put(np.arange(batch_size, dtype=np.int32) % num_classes)
  model = models.build_model(config.model)
  tx = training.make_optimizer(config, num_train=60_000)
  state = training.create_train_state(config, model, image_shape, 60_000, num_classes)
  step = jax.jit(training.make_train_step(model, config, tx,
                                          objectives.get_method(config.method).objective))
  key = jax.random.key(seed)

  def run_step():
    return step(state, images, labels, key)[1]['loss']

  step_s = common.median_seconds(run_step, repeats=repeats)
  forward = jax.jit(model.apply)
  variables = state.variables()
  forward_s = common.median_seconds(lambda: forward(variables, images), repeats=repeats)
  return {'model': model_name, 'method': method, 'batch_size': batch_size, 'step_s': step_s,
          'forward_s': forward_s, 'train_images_per_s': batch_size / step_s,
          'ratio_step_to_forward': step_s / forward_s}


def main(argv=None) -> dict:
  """Runs the benchmark; returns {'environment', 'results'}."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='small_cnn,large_cnn',
                      help=f'comma-separated encoders, from {models.MODEL_NAMES}')
  parser.add_argument('--batch_size', type=int, default=100)
  parser.add_argument('--methods', '--method', default='metric',
                      help=f'comma-separated method variants, from {sorted(VARIANTS)}')
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args(argv)
  names = args.models.split(',')
  unknown = [n for n in names if n not in models.MODEL_NAMES]
  if unknown:
    parser.error(f'unknown model(s) {unknown}; valid: {models.MODEL_NAMES}')
  variants = args.methods.split(',')
  unknown = [v for v in variants if v not in VARIANTS]
  if unknown:
    parser.error(f'unknown method variant(s) {unknown}; valid: {sorted(VARIANTS)}')

  env = common.environment()
  common.print_environment(env)
  print(f'{"model":>10} {"method":>28} {"batch":>6} {"step ms":>9} {"forward ms":>10} '
        f'{"train img/s":>11} {"ratio":>6} {"x metric":>8}')
  results = []
  for name in names:
    metric_step_s = None
    for variant in variants:
      result = time_train_step(name, batch_size=args.batch_size, method=variant,
                               repeats=args.repeats)
      if variant == 'metric':
        metric_step_s = result['step_s']
      result['ratio_step_to_metric_step'] = (result['step_s'] / metric_step_s
                                             if metric_step_s else None)
      results.append(result)
      relative = (f'{result["ratio_step_to_metric_step"]:>8.2f}' if metric_step_s
                  else f'{"-":>8}')
      print(f'{name:>10} {variant:>28} {args.batch_size:>6} {1e3 * result["step_s"]:>9.1f} '
            f'{1e3 * result["forward_s"]:>10.1f} {result["train_images_per_s"]:>11.0f} '
            f'{result["ratio_step_to_forward"]:>6.2f} {relative}', flush=True)
  return {'environment': env, 'results': results}


if __name__ == '__main__':
  main()
