"""Every ```python block of README.md and docs/*.md runs, so the examples cannot rot.

The blocks of one page run in order in one namespace, like the cells of a notebook: a block may use
the names an earlier block of the same page defined (the README's data set-up serves its three
encoder examples), and each page starts from a fresh namespace. They run from the repository root.
A block that is not meant to run (a signature, a shell session, output) takes another fence:
```text, ```bash. A failure names the page and the line of the block in the traceback.
"""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = [ROOT / 'README.md'] + sorted((ROOT / 'docs').glob('*.md'))
# An opening fence at any indentation, its language, the body, and the closing fence.
_BLOCK = re.compile(r'^(?P<indent>[ \t]*)```(?P<language>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ \t]*$',
                    re.MULTILINE | re.DOTALL)


def python_blocks(text: str) -> list[tuple[int, str]]:
  """(line of the block's first code line, dedented code) of every ```python block of `text`."""
  blocks = []
  for match in _BLOCK.finditer(text):
    if match.group('language').strip() != 'python':
      continue
    indent = len(match.group('indent'))
    code = '\n'.join(line[indent:] for line in match.group('body').splitlines())
    blocks.append((text.count('\n', 0, match.start('body')) + 1, code))
  return blocks


def test_python_blocks_are_found():
  blocks = python_blocks('text\n```python\nx = 1\n```\n\n  ```python\n  y = x\n  ```\n```text\nz\n```\n')
  assert blocks == [(3, 'x = 1'), (7, 'y = x')]
  assert python_blocks((ROOT / 'README.md').read_text(encoding='utf-8'))  # the README has examples


@pytest.mark.parametrize('page', [p for p in PAGES if python_blocks(p.read_text(encoding='utf-8'))],
                         ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run(page, monkeypatch):
  monkeypatch.chdir(ROOT)
  namespace = {'__name__': f'docs_example_{page.stem}'}
  for line, code in python_blocks(page.read_text(encoding='utf-8')):
    # Padding with blank lines makes the traceback's line numbers those of the page.
    exec(compile('\n' * (line - 1) + code, str(page.relative_to(ROOT)), 'exec'), namespace)  # pylint: disable=exec-used
