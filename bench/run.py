"""The benchmark suite: every bench script, one table, scaling over 1-8 devices, PyTorch side by side.

  python -m bench                 # the whole suite, reduced settings (under 10 minutes on 2 cores)
  python -m bench --json          # the same, one JSON object on stdout (the scripts' output on stderr)
  python -m bench --full          # each script with its own default settings (much longer)
  python -m bench --only ibp,topk --no_scaling --no_compare

For each hot path (forward, train step, IBP bounds, QA/CA verification, smoothing, PGD, blocked
top-k) the table gives the time per item and its ratio to a plain forward pass of the same encoder
per image, measured in the same run: each bench script times its own forward pass, and where a
script times none (the verification grid of bench/ibp.py) this runner times one with
`common.forward_baseline`. Every bench/*.py with a `main(argv) -> dict` runs; scripts without an
adapter here join the table when their result has `summary_rows` (`common.summary_row`), and are
listed as run otherwise.

Scaling: the data-parallel versions (`jaxcert.parallel`) of forward, train step, IBP, smoothing,
PGD and top-k, each in a fresh process with XLA_FLAGS=--xla_force_host_platform_device_count=D
for D = 1, 2, 4, 8. On a CPU those devices share the host's cores, so the numbers show how the
sharded code behaves there, not what real devices would gain; on a multi-GPU node or a TPU slice
run `python -m bench.run --scaling_worker` on the real devices.

Side by side (bench/compare_torch.py, when PyTorch is installed: pip install -e '.[compare]'):
IBP bounds against auto_LiRPA (where it imports) and a plain PyTorch IBP loop on the same weights,
and smoothing against a Cohen et al.-style PyTorch Monte-Carlo loop. bench/crown.py's rows
(CROWN-IBP, CROWN and alpha-CROWN bounds) include auto_LiRPA's on the same weights where it imports
(docs/linear_bounds.md, "Against auto_LiRPA").
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import pathlib
import subprocess
import sys
import time
import traceback

if __package__ in (None, ''):  # Run as `python bench/run.py`: import `bench` from the repo root.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

REPO = pathlib.Path(__file__).resolve().parent.parent
BENCH_DIR = REPO / 'bench'
IMAGE_SHAPE = (28, 28, 1)
SCALING_DEVICES = (1, 2, 4, 8)
NOT_SCRIPTS = {'common', 'run', '__main__'}

# Reduced settings of each script for the default suite (`--full` runs the scripts' defaults).
QUICK_ARGV = {
    'train_step': ['--models', 'small_cnn,large_cnn', '--batch_size', '100', '--repeats', '3'],
    'ibp': ['--models', 'small_cnn,large_cnn', '--batch_size', '100', '--repeats', '3',
            '--grid', '1000x1000'],
    'smoothing': ['--models', 'small_cnn,large_cnn', '--batch_size', '4', '--chunk_size', '64',
                  '--num_chunks', '2', '--repeats', '3', '--memory_samples', '1000,100000'],
    'attack': ['--models', 'small_cnn,large_cnn', '--batch_size', '32', '--num_steps', '5',
               '--repeats', '2'],
    'topk': ['--grid', '1000x1000,10000x10000', '--repeats', '3'],
    # Random weights leave most ReLUs unstable: CROWN costs seconds per image, so a small batch.
    'crown': ['--models', 'small_cnn', '--batch_size', '2', '--repeats', '1'],
    'compare_torch': ['--models', 'small_cnn,large_cnn', '--batch_size', '32',
                      '--smoothing_batch_size', '2', '--chunk_size', '32', '--num_samples', '256',
                      '--repeats', '3'],
}
HOT_PATH_ORDER = ('forward', 'train step', 'IBP bounds', 'CROWN-IBP bounds', 'CROWN bounds',
                  'alpha-CROWN bounds', 'QA/CA verification', 'smoothing',
                  'PGD step', 'blocked top-k')


def bench_scripts() -> list[str]:
  """Names of the bench scripts (bench/*.py but common, run, __main__ and compare_*)."""
  return sorted(p.stem for p in BENCH_DIR.glob('*.py')
                if p.stem not in NOT_SCRIPTS and not p.stem.startswith('compare_'))


# ---------------------------------------------------------------------------
# Adapters: a script's result -> summary rows.
# ---------------------------------------------------------------------------


def _train_step_rows(result, common):
  rows = []
  for r in result['results']:
    forward = r['forward_s'] / r['batch_size']
    setting = f'batch {r["batch_size"]}'
    rows.append(common.summary_row('forward', r['model'], setting, 'image', forward, forward))
    rows.append(common.summary_row('train step', r['model'], f'{setting}, {r["method"]}', 'image',
                                   r['step_s'] / r['batch_size'], forward))
  return rows


def _ibp_rows(result, common):
  # bench/ibp.py returns {'interval': ..., 'verification': {'QxN': ...}} in float32 and
  # 'interval_<dtype>', 'verification_<dtype>' in float32_rigorous and float64.
  suffixes = (('', ''), ('_float32_rigorous', ', rigorous float32'),
              ('_float64', ', float64'))  # (key suffix, setting suffix) per dtype
  rows = []
  for suffix, dtype in suffixes:
    rows += [common.summary_row('IBP bounds', name, f'batch {r["batch_size"]}{dtype}', 'image',
                                r['interval_s'] / r['batch_size'], r['forward_s'] / r['batch_size'])
             for name, r in result.get('interval' + suffix, {}).items()]
  for suffix, dtype in suffixes:
    for cell, r in result.get('verification' + suffix, {}).items():
      num_queries = int(cell.lower().split('x')[0])
      batch = min(num_queries, 1000)
      forward = common.forward_baseline('small_cnn', batch, IMAGE_SHAPE, repeats=3) / batch
      rows.append(common.summary_row('QA/CA verification', 'small_cnn (baseline)',
                                     f'{cell}, k = {r["k"]} (rank_bounds{dtype})', 'query',
                                     r['verify_s'] / num_queries, forward))
  return rows


def _smoothing_rows(result, common):
  return [common.summary_row('smoothing', name,
                             f'{r["batch_size"]} inputs x chunk {r["chunk_size"]}, '
                             f'n = {r["num_samples"]}', 'sample', 1 / r['smoothing_samples_per_s'],
                             1 / r['forward_images_per_s'])
          for name, r in result['results'].items()]


def _attack_rows(result, common):
  rows = []
  loop = result['auto_loop']
  for name, r in result['results'].items():
    batch = r['batch_size']
    forward_s = r.get('forward_s') or common.forward_baseline(name, batch, IMAGE_SHAPE, repeats=3)
    forward = forward_s / batch
    rows.append(common.summary_row('PGD step', name, f'batch {batch}, loop {loop}', 'image',
                                   r[f'{loop}_step_s'] / batch, forward))
  return rows


def _topk_rows(result, common):
  return [common.summary_row('blocked top-k', result['model'] + ' (baseline)',
                             f'{r["num_query"]} x {r["num_gallery"]}, k = {result["k"]}', 'query',
                             r['topk_s_per_query'], r['forward_s'] / r['num_query'])
          for r in result['results']]


ADAPTERS = {'train_step': _train_step_rows, 'ibp': _ibp_rows, 'smoothing': _smoothing_rows,
            'attack': _attack_rows, 'topk': _topk_rows}


# ---------------------------------------------------------------------------
# Scaling over devices (one subprocess per device count).
# ---------------------------------------------------------------------------


def scaling_measurements(repeats: int = 3) -> dict:
  """Seconds per item of the data-parallel hot paths on all visible devices (small_cnn)."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from bench import common  # pylint: disable=import-outside-toplevel
  from configs import default  # pylint: disable=import-outside-toplevel
  # pylint: disable-next=import-outside-toplevel
  from jaxcert import attacks, models, objectives, parallel, retrieval, smoothing, training
  from jaxcert.bounds import input_box, interval  # pylint: disable=import-outside-toplevel

  mesh = parallel.make_mesh()
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(256,) + IMAGE_SHAPE).astype(np.float32)
  sharded = lambda x: jax.device_put(x, parallel.batch_sharded(mesh))
  model = models.get_model('small_cnn', embedding_dim=128)
  variables = parallel.replicate(models.init_variables(model, jax.random.key(0), (1,) + IMAGE_SHAPE),
                                 mesh)
  embed = jax.tree_util.Partial(model.apply, variables)
  seconds = {}

  forward = parallel.data_parallel(jax.jit(lambda embed, x: embed(x)), mesh, batch_argnums=(1,))
  x256 = sharded(images)
  seconds['forward'] = common.median_seconds(lambda: forward(embed, x256), repeats=repeats) / 256

  config = default.get_config()
  config.batch_size = 128
  tx = training.make_optimizer(config, num_train=60_000)
  state = parallel.replicate(training.create_train_state(config, model, IMAGE_SHAPE, 60_000, 10), mesh)
  step = jax.jit(training.make_train_step(model, config, tx, objectives.get_method('metric').objective))
  x128 = sharded(images[:128])
  labels = sharded(np.arange(128, dtype=np.int32) % 10)
  key = jax.random.key(0)
  seconds['train step'] = common.median_seconds(
      lambda: step(state, x128, labels, key)[1]['loss'], repeats=repeats) / 128

  bounds = parallel.data_parallel(
      jax.jit(lambda embed, lower, upper: interval(embed)(lower, upper)), mesh, batch_argnums=(1, 2))
  lower, upper = (sharded(b) for b in input_box(images[:128], 0.1))
  seconds['IBP bounds'] = common.median_seconds(lambda: bounds(embed, lower, upper),
                                                repeats=repeats) / 128

  unit = jax.tree_util.Partial(models.get_model('small_cnn', embedding_dim=128, l2_normalize=True).apply,
                               variables)
  smoother = smoothing.sharded_smoother(
      smoothing.smooth(unit, sigma=0.25, num_samples=512, chunk_size=32), mesh, num_streams=8)
  x4 = images[:4]
  seconds['smoothing'] = common.median_seconds(lambda: smoother(key, x4).mean,
                                               repeats=repeats) / (4 * 512)

  num_steps = 5
  attack = parallel.data_parallel(
      attacks.pgd(attacks.squared_embedding_distance, eps=0.1, step_size=0.025, num_steps=num_steps),
      mesh, batch_argnums=(1, 3))
  x64 = sharded(images[:64])
  targets = sharded(np.asarray(jax.jit(embed)(images[64:128])))
  seconds['PGD step'] = common.median_seconds(lambda: attack(key, x64, embed, targets),
                                              repeats=repeats) / (64 * num_steps)

  queries = rng.normal(size=(2048, 128)).astype(np.float32)
  gallery = rng.normal(size=(4096, 128)).astype(np.float32)
  seconds['blocked top-k'] = common.median_seconds(
      lambda: retrieval.sharded_blocked_topk(queries, gallery, 40, mesh), repeats=repeats) / 2048
  return {'devices': mesh.devices.size, 'seconds_per_item': seconds,
          'settings': {'model': 'small_cnn', 'forward': 'batch 256', 'train step': 'batch 128',
                       'IBP bounds': 'batch 128', 'smoothing': '4 inputs, n = 512 in 8 streams',
                       'PGD step': 'batch 64, 5 steps', 'blocked top-k': '2048 x 4096, k = 40'}}


def run_scaling(device_counts=SCALING_DEVICES, timeout_s: float = 300.0) -> list[dict]:
  """`scaling_measurements` in a fresh process for each device count; errors become entries."""
  results = []
  flags = os.environ.get('XLA_FLAGS', '')
  for devices in device_counts:
    env = dict(os.environ, XLA_FLAGS=f'{flags} --xla_force_host_platform_device_count={devices}',
               JAX_PLATFORMS=os.environ.get('JAX_PLATFORMS', 'cpu'))
    print(f'scaling: {devices} device(s) ...', file=sys.stderr, flush=True)
    try:
      done = subprocess.run([sys.executable, '-m', 'bench.run', '--scaling_worker'], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
      results.append({'devices': devices, 'error': f'timed out after {timeout_s:.0f} s'})
      continue
    if done.returncode:
      results.append({'devices': devices, 'error': done.stderr.strip().splitlines()[-1:]})
      continue
    results.append(json.loads(done.stdout.strip().splitlines()[-1]))
  return results


# ---------------------------------------------------------------------------
# Tables.
# ---------------------------------------------------------------------------


def _duration(seconds: float) -> str:
  for unit, scale in (('s', 1.0), ('ms', 1e-3), ('us', 1e-6)):
    if seconds >= scale:
      return f'{seconds / scale:.3g} {unit}'
  return f'{seconds / 1e-9:.3g} ns'


def rows_table(rows: list[dict]) -> str:
  """Markdown table of summary rows, in HOT_PATH_ORDER."""
  order = {name: i for i, name in enumerate(HOT_PATH_ORDER)}
  rows = sorted(rows, key=lambda r: (order.get(r['hot_path'], len(order)), r['model']))
  lines = ['| hot path | model | setting | time per item | forward per image | ratio (forwards) |',
           '|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f'| {r["hot_path"]} | {r["model"]} | {r["setting"]} | '
                 f'{_duration(r["seconds_per_item"])} / {r["item"]} | '
                 f'{_duration(r["forward_seconds_per_image"])} | {r["ratio"]:.2f} |')
  return '\n'.join(lines)


def scaling_table(results: list[dict]) -> str:
  """Markdown: time per item on each device count, and its speed-up over one device."""
  good = [r for r in results if 'seconds_per_item' in r]
  if not good:
    return 'scaling: no device count ran: ' + '; '.join(str(r.get('error')) for r in results)
  base = next((r for r in good if r['devices'] == 1), good[0])
  lines = ['| hot path (small_cnn) | setting | ' + ' | '.join(f'{r["devices"]} dev' for r in good) + ' |',
           '|---|---|' + '---|' * len(good)]
  for name, base_s in base['seconds_per_item'].items():
    cells = [f'{_duration(r["seconds_per_item"][name])} (x{base_s / r["seconds_per_item"][name]:.2f})'
             for r in good]
    lines.append(f'| {name} | {base["settings"][name]} | ' + ' | '.join(cells) + ' |')
  failed = [r for r in results if 'error' in r]
  if failed:
    lines.append('\n' + '; '.join(f'{r["devices"]} devices failed: {r["error"]}' for r in failed))
  return '\n'.join(lines)


def comparison_table(result: dict) -> str:
  """Markdown: jaxcert against PyTorch references on the same weights."""
  if 'skipped' in result:
    return f'PyTorch comparison skipped: {result["skipped"]}'
  lines = [f'torch {result["torch_version"]}', '',
           '| comparison | model | setting | jaxcert | reference | reference / jaxcert | agreement |',
           '|---|---|---|---|---|---|---|']
  for r in result['ibp']:
    setting = f'batch {r["batch_size"]}, eps {r["eps"]}'
    relative = r['torch_ibp_max_abs_difference'] / r['bound_scale']
    lines.append(f'| IBP vs plain PyTorch IBP | {r["model"]} | {setting} | {_duration(r["jaxcert_ibp_s"])} | '
                 f'{_duration(r["torch_ibp_s"])} | {r["torch_ibp_s"] / r["jaxcert_ibp_s"]:.2f} | '
                 f'max diff {relative:.1e} of max bound |')
    lirpa = r['auto_lirpa']
    if 'skipped' in lirpa:
      lines.append(f'| IBP vs auto_LiRPA | {r["model"]} | {setting} | {_duration(r["jaxcert_ibp_s"])} | '
                   f'not run | - | {lirpa["skipped"]} |')
    else:
      lines.append(f'| IBP vs auto_LiRPA | {r["model"]} | {setting} | {_duration(r["jaxcert_ibp_s"])} | '
                   f'{_duration(lirpa["ibp_s"])} | {lirpa["ibp_s"] / r["jaxcert_ibp_s"]:.2f} | '
                   f'max diff {lirpa["max_abs_difference"] / r["bound_scale"]:.1e} of max bound |')
    lines.append(f'| forward vs PyTorch | {r["model"]} | batch {r["batch_size"]} | '
                 f'{_duration(r["jaxcert_forward_s"])} | {_duration(r["torch_forward_s"])} | '
                 f'{r["torch_forward_s"] / r["jaxcert_forward_s"]:.2f} | max diff '
                 f'{r["forward_max_abs_difference"]:.1e} |')
  for r in result['smoothing']:
    lines.append(f'| smoothing vs Cohen et al. loop | {r["model"]} | {r["batch_size"]} inputs, '
                 f'n = {r["num_samples"]} | {_duration(r["jaxcert_s_per_sample"])} / sample | '
                 f'{_duration(r["cohen_torch_s_per_sample"])} / sample | '
                 f'{r["cohen_torch_s"] / r["jaxcert_s"]:.2f} | estimates {r["estimate_gap"]:.3f} apart '
                 f'(<= {r["twice_concentration_radius_999"]:.3f}: '
                 f'{"ok" if r["estimates_agree"] else "DISAGREE"}) |')
  return '\n'.join(lines)


# ---------------------------------------------------------------------------
# The suite.
# ---------------------------------------------------------------------------


def _run_script(name: str, argv: list[str]) -> dict:
  module = importlib.import_module(f'bench.{name}')
  return module.main(argv)


def run_suite(*, only=None, full: bool = False, scaling: bool = True, compare: bool = True) -> dict:
  """Runs the scripts, scaling and the comparison; returns everything."""
  from bench import common  # pylint: disable=import-outside-toplevel
  start, load_before = time.perf_counter(), os.getloadavg()[0]
  env = common.environment()
  common.print_environment(env)
  rows, scripts, errors, unsummarised = [], {}, {}, []
  for name in bench_scripts():
    if only and name not in only:
      continue
    argv = [] if full else QUICK_ARGV.get(name, [])
    print(f'== bench/{name}.py {" ".join(argv)}', flush=True)
    try:
      result = _run_script(name, argv)
      scripts[name] = result
      if name in ADAPTERS:
        rows.extend(ADAPTERS[name](result, common))
      elif isinstance(result, dict) and 'summary_rows' in result:
        rows.extend(result['summary_rows'])
      else:
        unsummarised.append(name)
    except (Exception, SystemExit) as error:  # pylint: disable=broad-except  (one broken script,
      errors[name] = f'{type(error).__name__}: {error}'  # or one rejecting its argv, stops no other)
      traceback.print_exc()
  scaling_results = run_scaling() if scaling else []
  comparison = None
  if compare:
    print('== bench/compare_torch.py', flush=True)
    try:
      comparison = _run_script('compare_torch', [] if full else QUICK_ARGV['compare_torch'])
    except Exception as error:  # pylint: disable=broad-except
      errors['compare_torch'] = f'{type(error).__name__}: {error}'
      traceback.print_exc()
  return {'environment': env, 'rows': rows, 'scaling': scaling_results, 'comparison': comparison,
          'errors': errors, 'scripts': scripts, 'unsummarised': unsummarised, 'full': full,
          'total_seconds': time.perf_counter() - start,
          # Timings on a shared machine depend on what else runs: the 1-minute load average.
          'load_average': (load_before, os.getloadavg()[0])}


def report(suite: dict) -> str:
  """The suite's tables as markdown."""
  env = suite['environment']
  parts = [f'jax {env["jax_version"]}, backend {env["backend"]}, {len(env["devices"])} device(s), '
           f'{env["cpu_count"]} host CPUs, XLA_FLAGS={env["xla_flags"]!r}; '
           f'{"full" if suite["full"] else "reduced"} settings; suite ran {suite["total_seconds"]:.0f} s; '
           'load average {:.1f} at the start, {:.1f} at the end.'.format(*suite['load_average']),
           '', rows_table(suite['rows'])]
  if suite['scaling']:
    parts += ['', 'Scaling over forced CPU devices (time per item, speed-up over 1 device):', '',
              scaling_table(suite['scaling'])]
  if suite['comparison'] is not None:
    parts += ['', 'Side by side with PyTorch on the same weights:', '', comparison_table(suite['comparison'])]
  if suite['unsummarised']:
    parts += ['', 'Ran without summary rows (their results are in --json): '
              + ', '.join(suite['unsummarised'])]
  if suite['errors']:
    parts += ['', 'Errors: ' + '; '.join(f'{k}: {v}' for k, v in suite['errors'].items())]
  return '\n'.join(parts)


def _json_default(value):
  if hasattr(value, 'tolist'):
    return value.tolist()
  return str(value)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--json', action='store_true', help='print one JSON object on stdout')
  parser.add_argument('--full', action='store_true', help="each script's own default settings")
  parser.add_argument('--only', default='', help=f'comma-separated scripts, from {bench_scripts()}')
  parser.add_argument('--no_scaling', action='store_true')
  parser.add_argument('--no_compare', action='store_true')
  parser.add_argument('--scaling_worker', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.scaling_worker:
    with contextlib.redirect_stdout(sys.stderr):
      result = scaling_measurements()
    print(json.dumps(result))
    return result
  only = {name for name in args.only.split(',') if name}
  unknown = only - set(bench_scripts())
  if unknown:
    parser.error(f'unknown scripts {sorted(unknown)}; valid: {bench_scripts()}')
  output = sys.stderr if args.json else sys.stdout
  with contextlib.redirect_stdout(output):
    suite = run_suite(only=only, full=args.full, scaling=not args.no_scaling,
                      compare=not args.no_compare)
    table = report(suite)
  if args.json:
    print(json.dumps({**suite, 'table': table}, default=_json_default, indent=1))
  else:
    print('\n' + table)
  return suite


if __name__ == '__main__':
  main()
