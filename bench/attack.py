"""Benchmark: PGD iterations per second against forward+backward passes per second.

For each encoder, times on the same batch (a) one jitted forward+backward
pass, the gradient with respect to the input of the attack loss (what one PGD
step needs), and (b) a whole `jaxcert.attacks.pgd` run of `--num_steps`
steps, with the Python loop over one jitted step and with `lax.fori_loop`,
and (c) a plain forward pass. Prints (PGD iterations/s) / (forward+backward
passes/s) and the PGD step time over the forward time for each loop, and
flags the loop that `loop='auto'` picks on this backend when its ratio is
below the goal of 0.9. The encoder enters as
`jax.tree_util.Partial(model.apply, variables)`, so its weights are runtime
arguments, as in training and evaluation.

  python bench/attack.py
  python bench/attack.py --models small_cnn --batch_size 256 --num_steps 20
"""

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

if __package__ in (None, ''):  # Run as `python bench/attack.py`: import `bench` from the repo root.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from bench import common  # pylint: disable=wrong-import-position
from jaxcert import attacks  # pylint: disable=wrong-import-position
from jaxcert import models  # pylint: disable=wrong-import-position

IMAGE_SHAPE = (28, 28, 1)
EPS = 0.1
GOAL = 0.9


def time_pgd_over_forward_backward(embed, images, anchor_emb, *,
                                   num_steps: int, repeats: int) -> dict:
  """Times a forward pass, a forward+backward pass and PGD runs (both loops) on one batch.

  Args:
    embed: encoder as a `jax.tree_util.Partial`.
    images: (B, H, W, C) in [0, 1].
    anchor_emb: (B, k) embeddings the attack pushes away from.
    num_steps: PGD steps per timed run.
    repeats: timed calls of each function (the median is kept).

  Returns:
    {'forward_s', 'forward_backward_s', and per loop '<loop>_step_s', '<loop>_ratio'
    = (PGD iterations/s) / (forward+backward passes/s) and '<loop>_step_over_forward'}.
  """
  loss = attacks.squared_embedding_distance
  forward = jax.jit(lambda x, embed: embed(x))
  forward_backward = jax.jit(jax.grad(
      lambda x, embed, anchor: jnp.sum(loss(x, embed, anchor))))
  key = jax.random.key(0)
  result = {
      'forward_s': common.median_seconds(lambda: forward(images, embed), repeats=repeats),
      'forward_backward_s': common.median_seconds(
          lambda: forward_backward(images, embed, anchor_emb), repeats=repeats)}
  for loop in ('python', 'fori'):
    attack = attacks.pgd(loss, eps=EPS, step_size=EPS / 4,
                         num_steps=num_steps, loop=loop)
    run_s = common.median_seconds(lambda: attack(key, images, embed, anchor_emb),
                                  repeats=max(1, repeats // 2))
    result[f'{loop}_step_s'] = run_s / num_steps
    result[f'{loop}_ratio'] = (result['forward_backward_s'] /
                               result[f'{loop}_step_s'])
    result[f'{loop}_step_over_forward'] = result[f'{loop}_step_s'] / result['forward_s']
  return result


def main(argv=None) -> dict:
  """Runs the benchmark; returns {'environment', 'auto_loop', 'results'}."""
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--models', default='small_cnn,large_cnn',
                      help=f'comma-separated names from {models.MODEL_NAMES}')
  parser.add_argument('--batch_size', type=int, default=128)
  parser.add_argument('--embedding_dim', type=int, default=128)
  parser.add_argument('--num_steps', type=int, default=10,
                      help='PGD steps per timed attack')
  parser.add_argument('--repeats', type=int, default=6)
  args = parser.parse_args(argv)

  names = common.parse_model_names(parser, args.models, models.MODEL_NAMES)
  environment = common.environment()
  common.print_environment(environment)
  auto_loop = attacks.resolve_loop('auto')
  print(f'image {IMAGE_SHAPE}, {args.num_steps} PGD steps; ratio = (PGD iterations/s) / '
        f'(forward+backward passes/s), goal >= {GOAL}; step/fwd = PGD step time / forward time')
  print(f'{"model":<10} {"batch":>5} {"fwd ms":>8} {"fwd+bwd ms":>10} {"python ms":>9} '
        f'{"ratio":>6} {"step/fwd":>8} {"fori ms":>8} {"ratio":>6} {"step/fwd":>8}')
  rng = np.random.default_rng(0)
  results = {}
  for name in names:
    model = models.get_model(name, embedding_dim=args.embedding_dim)
    variables = models.init_variables(model, jax.random.key(0),
                                      (1,) + IMAGE_SHAPE)
    embed = jax.tree_util.Partial(model.apply, variables)
    images = jnp.asarray(rng.uniform(size=(args.batch_size,) + IMAGE_SHAPE),
                         jnp.float32)
    anchor_emb = jax.jit(embed)(images[::-1])
    timing = time_pgd_over_forward_backward(
        embed, images, anchor_emb, num_steps=args.num_steps,
        repeats=args.repeats)
    timing['meets_goal'] = timing[f'{auto_loop}_ratio'] >= GOAL
    results[name] = {'batch_size': args.batch_size, **timing}
    flag = f'{auto_loop}: ' + ('ok' if timing['meets_goal'] else 'BELOW GOAL')
    print(f'{name:<10} {args.batch_size:>5} {1e3 * timing["forward_s"]:>8.2f} '
          f'{1e3 * timing["forward_backward_s"]:>10.2f} '
          f'{1e3 * timing["python_step_s"]:>9.2f} {timing["python_ratio"]:>6.2f} '
          f'{timing["python_step_over_forward"]:>8.2f} '
          f'{1e3 * timing["fori_step_s"]:>8.2f} {timing["fori_ratio"]:>6.2f} '
          f'{timing["fori_step_over_forward"]:>8.2f}  {flag}', flush=True)
  return {'environment': environment, 'auto_loop': auto_loop, 'results': results}


if __name__ == '__main__':
  main()
