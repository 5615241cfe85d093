"""Side by side with PyTorch on the same weights: IBP bounds and Cohen et al.-style smoothing.

For each encoder (small_cnn, large_cnn of Kakizaki et al., random weights from one seed), the Flax
parameters are copied into an equivalent PyTorch module (NCHW convolutions with TF 'SAME' padding,
flattening in NHWC order), and on the same inputs:

* IBP bounds: `jaxcert.bounds.interval` (jitted) against auto_LiRPA's `compute_bounds(method='IBP')`
  when auto_LiRPA imports, and against a plain PyTorch centre/radius loop (Gowal et al. 2018,
  Eqs. 6-7; Kakizaki et al. Eqs. 15-16) that always runs: the largest bound difference and the time ratio.
* Monte-Carlo smoothing: `jaxcert.smoothing.smooth` against the sampling loop of Cohen et al.'s
  `Smooth._sample_noise` (locuslab/smoothing, core.py: per input, repeat it `batch_size` times, add
  `randn_like * sigma`, run the model, accumulate) with the embeddings summed instead of the class
  counts: the time ratio, and the distance between the two estimates of g(x) (both within the
  concentration radius of g, so within twice it of each other).

The torch extra (`pip install -e '.[compare]'`) brings PyTorch (CPU) and auto_LiRPA's small
dependencies. Without torch the script says so and returns {'skipped': reason}. auto_LiRPA 0.3,
the latest on PyPI, needs torch < 1.13 and numpy < 2 (it imports `numpy.lib.arraysetops` and
`torch.onnx.symbolic_helper._set_opset_version`); where it does not import, its row says why.

  python bench/compare_torch.py
  python bench/compare_torch.py --models small_cnn --batch_size 32 --num_samples 2048
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

if __package__ in (None, ''):  # Run as `python bench/compare_torch.py`: import `bench` from the root.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from bench import common  # pylint: disable=wrong-import-position
from jaxcert import models  # pylint: disable=wrong-import-position
from jaxcert import smoothing  # pylint: disable=wrong-import-position
from jaxcert.bounds import input_box  # pylint: disable=wrong-import-position
from jaxcert.bounds import interval  # pylint: disable=wrong-import-position

IMAGE_SHAPE = (28, 28, 1)
EPS = 0.1
SIGMA = 0.25
# Layer lists of the encoders (jaxcert/models/cnn.py): ('conv', name, stride, padding), ('relu',),
# ('flatten',), ('dense', name).
LAYERS = {
    'small_cnn': [('conv', 'conv1', 2, 'VALID'), ('relu',), ('conv', 'conv2', 1, 'VALID'),
                  ('relu',), ('flatten',), ('dense', 'dense1'), ('relu',), ('dense', 'embedding')],
    'large_cnn': [layer for index, stride in enumerate((1, 1, 2, 1, 1))
                  for layer in (('conv', f'conv{index + 1}', stride, 'SAME'), ('relu',))]
                 + [('flatten',), ('dense', 'dense1'), ('relu',), ('dense', 'embedding')],
}


def torch_or_reason():
  """(torch module, None), or (None, why it is missing)."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as error:
    return None, (f'PyTorch is not installed ({error}); pip install -e ".[compare]" brings the CPU '
                  'build.')
  return torch, None


def auto_lirpa_or_reason():
  """(auto_LiRPA module, None), or (None, why it does not import)."""
  try:
    import auto_LiRPA  # pylint: disable=import-outside-toplevel
  except Exception as error:  # pylint: disable=broad-except  (its imports fail in several ways)
    return None, (f'auto_LiRPA does not import here ({type(error).__name__}: {error}); version 0.3, '
                  'the latest on PyPI, needs torch < 1.13 and numpy < 2.')
  return auto_LiRPA, None


def _same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """(before, after) padding of TF/Flax 'SAME' along one axis."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def torch_encoder(torch, model_name: str, params: dict, image_shape=IMAGE_SHAPE):
  """A `torch.nn.Module` computing the Flax encoder `model_name` with `params` on NCHW input."""
  functional = torch.nn.functional

  class Encoder(torch.nn.Module):
    """Flax's layers with Flax's weights: (N, C, H, W) -> (N, k)."""

    def __init__(self):
      super().__init__()
      self.steps = []  # (kind, weight, bias, stride, pads)
      height, width = image_shape[:2]
      for layer in LAYERS[model_name]:
        if layer[0] == 'conv':
          _, name, stride, padding = layer
          kernel = np.asarray(params[name]['kernel'])  # (kh, kw, in, out)
          pads = (0, 0, 0, 0)
          if padding == 'SAME':
            top, bottom = _same_padding(height, kernel.shape[0], stride)
            left, right = _same_padding(width, kernel.shape[1], stride)
            pads = (left, right, top, bottom)
          height = (height + pads[2] + pads[3] - kernel.shape[0]) // stride + 1
          width = (width + pads[0] + pads[1] - kernel.shape[1]) // stride + 1
          weight = torch.nn.Parameter(torch.from_numpy(np.array(kernel.transpose(3, 2, 0, 1))))
          bias = torch.nn.Parameter(torch.from_numpy(np.array(params[name]['bias'])))
          self.register_parameter(f'{name}_weight', weight)
          self.register_parameter(f'{name}_bias', bias)
          self.steps.append(('conv', weight, bias, stride, pads))
        elif layer[0] == 'dense':
          kernel = np.asarray(params[layer[1]]['kernel'])  # (in, out)
          weight = torch.nn.Parameter(torch.from_numpy(np.array(kernel.T)))
          bias = torch.nn.Parameter(torch.from_numpy(np.array(params[layer[1]]['bias'])))
          self.register_parameter(f'{layer[1]}_weight', weight)
          self.register_parameter(f'{layer[1]}_bias', bias)
          self.steps.append(('dense', weight, bias, None, None))
        else:
          self.steps.append((layer[0], None, None, None, None))

    def forward(self, x):
      for kind, weight, bias, stride, pads in self.steps:
        if kind == 'conv':
          x = functional.conv2d(functional.pad(x, pads), weight, bias, stride=stride)
        elif kind == 'dense':
          x = functional.linear(x, weight, bias)
        elif kind == 'relu':
          x = torch.relu(x)
        else:  # Flax flattens (H, W, C).
          x = x.permute(0, 2, 3, 1).flatten(1)
      return x

    def interval(self, lower, upper):
      """Plain IBP: affine layers in centre/radius form, ReLU on both ends (Kakizaki et al. Eqs. 15-16)."""
      for kind, weight, bias, stride, pads in self.steps:
        if kind in ('conv', 'dense'):
          center, radius = (upper + lower) / 2, (upper - lower) / 2
          if kind == 'conv':
            center = functional.conv2d(functional.pad(center, pads), weight, bias, stride=stride)
            radius = functional.conv2d(functional.pad(radius, pads), weight.abs(), stride=stride)
          else:
            center = functional.linear(center, weight, bias)
            radius = functional.linear(radius, weight.abs())
          lower, upper = center - radius, center + radius
        elif kind == 'relu':
          lower, upper = torch.relu(lower), torch.relu(upper)
        else:
          lower = lower.permute(0, 2, 3, 1).flatten(1)
          upper = upper.permute(0, 2, 3, 1).flatten(1)
      return lower, upper

  return Encoder().eval()


def _median_seconds_torch(torch, fn, repeats: int) -> float:
  """`common.median_seconds` of a PyTorch function (eager CPU ops finish before they return)."""
  with torch.no_grad():
    return common.median_seconds(fn, repeats=repeats)


def compare_ibp(torch, model_name: str, *, batch_size: int, repeats: int, seed: int = 0) -> dict:
  """Bounds and times of jaxcert's IBP, plain PyTorch IBP and (if it imports) auto_LiRPA's."""
  model = models.get_model(model_name, embedding_dim=128)
  variables = models.init_variables(model, jax.random.key(seed), (1,) + IMAGE_SHAPE)
  images = np.random.default_rng(seed).uniform(size=(batch_size,) + IMAGE_SHAPE).astype(np.float32)
  lower, upper = input_box(images, EPS)
  bounded = jax.jit(lambda variables, lower, upper: interval(
      lambda x: model.apply(variables, x))(lower, upper))
  forward = jax.jit(model.apply)
  jax_lower, jax_upper = (np.asarray(b) for b in bounded(variables, lower, upper))
  jax_s = common.median_seconds(lambda: bounded(variables, lower, upper), repeats=repeats)
  forward_s = common.median_seconds(lambda: forward(variables, images), repeats=repeats)

  module = torch_encoder(torch, model_name, variables['params'])
  to_nchw = lambda a: torch.from_numpy(np.asarray(a).transpose(0, 3, 1, 2).copy())
  torch_images, torch_lower, torch_upper = to_nchw(images), to_nchw(lower), to_nchw(upper)
  with torch.no_grad():
    forward_gap = float(np.max(np.abs(module(torch_images).numpy() - np.asarray(
        forward(variables, images)))))
    plain_lower, plain_upper = (b.numpy() for b in module.interval(torch_lower, torch_upper))
  scale = max(float(np.max(np.abs(jax_upper))), float(np.max(np.abs(jax_lower))), 1.0)
  result = {
      'model': model_name, 'batch_size': batch_size, 'eps': EPS,
      'jaxcert_ibp_s': jax_s, 'jaxcert_forward_s': forward_s,
      'torch_forward_s': _median_seconds_torch(torch, lambda: module(torch_images), repeats),
      'torch_ibp_s': _median_seconds_torch(
          torch, lambda: module.interval(torch_lower, torch_upper), repeats),
      'forward_max_abs_difference': forward_gap,
      'torch_ibp_max_abs_difference': float(max(np.max(np.abs(plain_lower - jax_lower)),
                                                np.max(np.abs(plain_upper - jax_upper)))),
      'bound_scale': scale,
  }
  auto_lirpa, reason = auto_lirpa_or_reason()
  if auto_lirpa is None:
    result['auto_lirpa'] = {'skipped': reason}
    return result
  # auto_LiRPA's Pad node rejects `module`'s explicit padding: its layers as Conv2d/Linear only.
  from bench import crown  # pylint: disable=import-outside-toplevel  (crown imports this module)
  bounded_module = auto_lirpa.BoundedModule(
      crown.torch_sequential(torch, model, variables['params'], IMAGE_SHAPE),
      torch.zeros((1,) + torch_images.shape[1:]))
  perturbation = auto_lirpa.PerturbationLpNorm(norm=float('inf'), x_L=torch_lower, x_U=torch_upper)
  box = auto_lirpa.BoundedTensor(torch_images, perturbation)
  run = lambda: bounded_module.compute_bounds(x=(box,), method='IBP')
  with torch.no_grad():
    lirpa_lower, lirpa_upper = (b.numpy() for b in run())
  result['auto_lirpa'] = {
      'ibp_s': _median_seconds_torch(torch, run, repeats),
      'max_abs_difference': float(max(np.max(np.abs(lirpa_lower - jax_lower)),
                                      np.max(np.abs(lirpa_upper - jax_upper))))}
  return result


def cohen_style_smoothed_mean(torch, module, x, *, sigma: float, num_samples: int,
                              batch_size: int):
  """g_hat(x) for each input, looping like Cohen et al.'s `_sample_noise` (embeddings summed)."""
  means = []
  with torch.no_grad():
    for row in x:
      total, remaining = 0.0, num_samples
      while remaining > 0:
        this_batch_size = min(batch_size, remaining)
        batch = row[None].repeat((this_batch_size, 1, 1, 1))
        noise = torch.randn_like(batch) * sigma
        total = total + module(batch + noise).sum(0)
        remaining -= this_batch_size
      means.append(total / num_samples)
  return torch.stack(means)


def compare_smoothing(torch, model_name: str, *, batch_size: int, chunk_size: int,
                      num_samples: int, repeats: int, seed: int = 0) -> dict:
  """Times g_hat for `batch_size` inputs with n samples: jaxcert's smoother and Cohen's loop."""
  model = models.get_model(model_name, embedding_dim=128, l2_normalize=True)
  variables = models.init_variables(model, jax.random.key(seed), (1,) + IMAGE_SHAPE)
  images = np.random.default_rng(seed).uniform(size=(batch_size,) + IMAGE_SHAPE).astype(np.float32)
  embed = jax.tree_util.Partial(model.apply, variables)
  smoother = smoothing.smooth(embed, sigma=SIGMA, num_samples=num_samples, chunk_size=chunk_size)
  key = jax.random.key(seed)
  jax_mean = np.asarray(smoother(key, jnp.asarray(images)).mean)
  jax_s = common.median_seconds(lambda: smoother(key, jnp.asarray(images)).mean, repeats=repeats)

  module = torch_encoder(torch, model_name, variables['params'])
  normalized = lambda x: torch.nn.functional.normalize(module(x), dim=1)
  torch_images = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  torch.manual_seed(seed)
  run = lambda: cohen_style_smoothed_mean(torch, normalized, torch_images, sigma=SIGMA,
                                          num_samples=num_samples,
                                          batch_size=chunk_size * batch_size)
  torch_mean = run().numpy()
  torch_s = _median_seconds_torch(torch, run, max(1, repeats // 2))
  radius = smoothing.vector_concentration_radius(num_samples, 1e-3, embedding_dim=128)
  gap = float(np.max(np.linalg.norm(jax_mean - torch_mean, axis=1)))
  return {'model': model_name, 'batch_size': batch_size, 'num_samples': num_samples,
          'chunk_size': chunk_size, 'torch_batch_size': chunk_size * batch_size, 'sigma': SIGMA,
          'jaxcert_s': jax_s, 'cohen_torch_s': torch_s,
          'jaxcert_s_per_sample': jax_s / (batch_size * num_samples),
          'cohen_torch_s_per_sample': torch_s / (batch_size * num_samples),
          'estimate_gap': gap, 'twice_concentration_radius_999': 2 * radius,
          'estimates_agree': gap <= 2 * radius}


def main(argv=None) -> dict:
  """Runs the comparisons; returns {'environment', 'torch_version', 'ibp', 'smoothing'} or
  {'environment', 'skipped'}."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='small_cnn,large_cnn',
                      help=f'comma-separated names from {sorted(LAYERS)}')
  parser.add_argument('--batch_size', type=int, default=64, help='IBP: boxes per call')
  parser.add_argument('--smoothing_batch_size', type=int, default=4, help='inputs smoothed')
  parser.add_argument('--chunk_size', type=int, default=128, help='smoothing samples per step')
  parser.add_argument('--num_samples', type=int, default=1024, help='smoothing samples per input')
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args(argv)
  names = common.parse_model_names(parser, args.models, LAYERS)
  env = common.environment()
  common.print_environment(env)
  torch, reason = torch_or_reason()
  if torch is None:
    print(f'Skipping the PyTorch comparison: {reason}')
    return {'environment': env, 'skipped': reason}
  print(f'torch {torch.__version__} ({torch.get_num_threads()} threads)')
  ibp_results, smoothing_results = [], []
  for name in names:
    ibp = compare_ibp(torch, name, batch_size=args.batch_size, repeats=args.repeats)
    ibp_results.append(ibp)
    print(f'{name} IBP, batch {args.batch_size}, eps {EPS}: jaxcert {1e3 * ibp["jaxcert_ibp_s"]:.1f} '
          f'ms, PyTorch loop {1e3 * ibp["torch_ibp_s"]:.1f} ms (x{ibp["torch_ibp_s"] / ibp["jaxcert_ibp_s"]:.2f}), '
          f'max |bound difference| {ibp["torch_ibp_max_abs_difference"]:.2e} = '
          f'{ibp["torch_ibp_max_abs_difference"] / ibp["bound_scale"]:.1e} of the largest |bound| '
          f'{ibp["bound_scale"]:.3g}; forward jaxcert {1e3 * ibp["jaxcert_forward_s"]:.1f} ms, '
          f'PyTorch {1e3 * ibp["torch_forward_s"]:.1f} ms', flush=True)
    lirpa = ibp['auto_lirpa']
    print(f'  auto_LiRPA: {lirpa["skipped"]}' if 'skipped' in lirpa else
          f'  auto_LiRPA IBP {1e3 * lirpa["ibp_s"]:.1f} ms (x{lirpa["ibp_s"] / ibp["jaxcert_ibp_s"]:.2f}), '
          f'max |bound difference| {lirpa["max_abs_difference"]:.2e}', flush=True)
    smoothed = compare_smoothing(torch, name, batch_size=args.smoothing_batch_size,
                                 chunk_size=args.chunk_size, num_samples=args.num_samples,
                                 repeats=args.repeats)
    smoothing_results.append(smoothed)
    print(f'{name} smoothing, {args.smoothing_batch_size} inputs x n = {args.num_samples}: jaxcert '
          f'{smoothed["jaxcert_s"]:.3f} s, Cohen-style PyTorch loop {smoothed["cohen_torch_s"]:.3f} s '
          f'(x{smoothed["cohen_torch_s"] / smoothed["jaxcert_s"]:.2f}); estimates differ by '
          f'{smoothed["estimate_gap"]:.3f} (<= {smoothed["twice_concentration_radius_999"]:.3f}: '
          f'{"ok" if smoothed["estimates_agree"] else "DISAGREE"})', flush=True)
  return {'environment': env, 'torch_version': torch.__version__, 'ibp': ibp_results,
          'smoothing': smoothing_results}


if __name__ == '__main__':
  main()
