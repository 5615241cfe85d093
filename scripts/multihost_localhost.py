"""Runs a jaxcert driver as the N processes of one multi-host job on this machine (CPU backend).

Every process gets JAXCERT_COORDINATOR=localhost:<free port>, JAXCERT_NUM_PROCESSES=N and
JAXCERT_PROCESS_ID=i (read by `jaxcert.parallel.initialize_from_config`), JAX_PLATFORMS=cpu and
`--devices_per_process` CPU devices. The processes talk through JAX's coordination service and
gloo, exactly as the hosts of a pod slice do over the network, so this checks a multi-host run
without a cluster (docs/scaling.md).

  python scripts/multihost_localhost.py --num_processes 2 -- train.py \
      --config configs/quickstart.py --workdir /tmp/mh --config.parallel.num_devices=-1
  python scripts/multihost_localhost.py --num_processes 2 -- certify.py \
      --config configs/quickstart.py --config.checkpoint=/tmp/mh

Each process's output goes to <log_dir>/process_<i>.log. If one process fails, the others (which
would wait for it in a collective) are stopped. Exit status: 0 if every process succeeded.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  """A TCP port on localhost that is free now."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
    sock.bind(('localhost', 0))
    return sock.getsockname()[1]


def launch(command: list[str], num_processes: int, *, log_dir: str, devices_per_process: int = 1,
           timeout_s: float = 600.0) -> list[int]:
  """Runs `python <command>` as `num_processes` processes of one job; returns their exit codes.

  Args:
    command: script and arguments, e.g. ['train.py', '--config', ...], run from the repository root.
    num_processes: processes in the job.
    log_dir: receives process_<i>.log (stdout and stderr of process i).
    devices_per_process: CPU devices per process (XLA_FLAGS device count).
    timeout_s: the job is stopped after this long; stopped processes report -9 (SIGKILL) or -15.
  """
  os.makedirs(log_dir, exist_ok=True)
  address = f'localhost:{free_port()}'
  flags = os.environ.get('XLA_FLAGS', '')
  processes, logs = [], []
  for process_id in range(num_processes):
    env = dict(os.environ, JAX_PLATFORMS='cpu', JAXCERT_COORDINATOR=address,
               JAXCERT_NUM_PROCESSES=str(num_processes), JAXCERT_PROCESS_ID=str(process_id),
               XLA_FLAGS=f'{flags} --xla_force_host_platform_device_count={devices_per_process}')
    log = open(os.path.join(log_dir, f'process_{process_id}.log'), 'w', encoding='utf-8')
    logs.append(log)
    processes.append(subprocess.Popen([sys.executable] + command, cwd=REPO, env=env, stdout=log,
                                      stderr=subprocess.STDOUT))
  deadline = time.monotonic() + timeout_s
  try:
    while any(p.poll() is None for p in processes):
      failed = any(p.returncode not in (None, 0) for p in processes)
      if failed or time.monotonic() > deadline:
        for p in processes:
          if p.poll() is None:
            p.terminate()
        for p in processes:
          try:
            p.wait(timeout=10)
          except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        break
      time.sleep(0.2)
  finally:
    for log in logs:
      log.close()
  return [p.returncode for p in processes]


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                   usage='%(prog)s [options] -- script.py [script arguments]')
  parser.add_argument('--num_processes', type=int, default=2)
  parser.add_argument('--devices_per_process', type=int, default=1)
  parser.add_argument('--log_dir', default=None, help='default: a new temporary directory')
  parser.add_argument('--timeout_s', type=float, default=600.0)
  parser.add_argument('command', nargs=argparse.REMAINDER)
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ['--'] else args.command
  if not command:
    parser.error('give the driver to run after --, e.g. -- train.py --config configs/quickstart.py ...')
  if args.num_processes < 1 or args.devices_per_process < 1:
    parser.error('--num_processes and --devices_per_process must be >= 1.')
  log_dir = args.log_dir or tempfile.mkdtemp(prefix='jaxcert_multihost_')
  codes = launch(command, args.num_processes, log_dir=log_dir,
                 devices_per_process=args.devices_per_process, timeout_s=args.timeout_s)
  print(f'exit codes {codes}; logs in {log_dir}')
  return 0 if all(code == 0 for code in codes) else 1


if __name__ == '__main__':
  sys.exit(main())
