"""The docs run: every code block of README.md and docs/*.md, and the generated reference.

How a Markdown page marks its blocks (see docs/development.md):

- ```python blocks run in one Python process per page, in page order, sharing one namespace
  (a later block may use names an earlier one defined).
- ```bash / ```sh blocks run with `bash -euo pipefail`; ```console blocks run their `$ ` lines.
- Every block of a page runs in the same fresh working directory, where the checkout's
  main.py, configs/, examples/ and benchmarks/ are linked, so relative paths work as in a
  checkout and `runs/` is written there.
- `<!-- docs: no-run (reason) -->` on the line before a fence skips that block; the reason is
  required. ```text (or any other language) blocks are shown, never run: use them for output.
- A fence without a language and an indented code block are errors: each block says what it is.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
RUN_LANGUAGES = {'python', 'bash', 'sh', 'console'}
LINKED = ('main.py', 'configs', 'examples', 'benchmarks')
NO_RUN = re.compile(r'<!--\s*docs:\s*no-run\s*\((?P<reason>[^)]*)\)\s*-->')
# Seconds per page. On a quiet 2-core machine a page takes well under a minute; the margin is
# for shared machines, where a niced test gets a small share of the cores.
TIMEOUT_S = 1800
FENCE = re.compile(r'^(?P<indent> {0,3})(?P<fence>```+|~~~+)\s*(?P<info>[^`\s]*)')


def pages():
    return [REPO_ROOT / 'README.md'] + sorted((REPO_ROOT / 'docs').glob('*.md'))


def extract_blocks(text):
    """[(line, language, code, no_run_reason or None)] of a Markdown text, and a list of errors."""
    blocks, errors = [], []
    lines = text.splitlines()
    i, previous_blank = 0, True
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match:
            start, fence, language = i, match.group('fence'), match.group('info').lower()
            body = []
            i += 1
            while i < len(lines) and not lines[i].lstrip().startswith(fence):
                body.append(lines[i])
                i += 1
            if i == len(lines):
                errors.append(f'line {start + 1}: unclosed code fence')
            before = lines[start - 1] if start else ''
            no_run = NO_RUN.search(before)
            if not language:
                errors.append(
                    f'line {start + 1}: a fence without a language (use python, bash or text)'
                )
            if 'docs:' in before and not no_run:
                errors.append(f'line {start}: malformed docs marker {before.strip()!r}')
            reason = no_run.group('reason').strip() if no_run else None
            if no_run and not reason:
                errors.append(f'line {start}: no-run needs a reason in its parentheses')
            indent = len(match.group('indent'))
            code = '\n'.join(line[indent:] if line[:indent].isspace() else line for line in body)
            blocks.append((start + 1, language, code, reason))
            i += 1
            previous_blank = False
            continue
        line = lines[i]
        if previous_blank and line.startswith('    ') and line.strip():
            errors.append(f'line {i + 1}: an indented code block (use a fence with a language)')
        previous_blank = not line.strip()
        i += 1
    return blocks, errors


def _console_commands(code):
    commands = []
    for line in code.splitlines():
        if line.startswith('$ '):
            commands.append(line[2:])
        elif commands and commands[-1].endswith('\\'):
            commands[-1] += '\n' + line
    return '\n'.join(commands)


# Runs the blocks of one page in order; Python blocks share one namespace.
DRIVER = r"""
import json, subprocess, sys, traceback
blocks = json.load(open(sys.argv[1]))
namespace = {'__name__': '__main__'}
for line, language, code in blocks:
    print(f'=== block at line {line} ({language})', flush=True)
    if language == 'python':
        try:
            exec(compile(code, f'<{sys.argv[2]}:{line}>', 'exec'), namespace)
        except BaseException:
            traceback.print_exc()
            print(f'FAILED: the python block at line {line}', flush=True)
            sys.exit(1)
    else:
        done = subprocess.run(['bash', '-euo', 'pipefail', '-c', code])
        if done.returncode:
            print(f'FAILED: the shell block at line {line} exited {done.returncode}', flush=True)
            sys.exit(1)
"""


def _runnable(page):
    blocks, errors = extract_blocks(page.read_text(encoding='utf-8'))
    runnable = []
    for line, language, code, reason in blocks:
        if language not in RUN_LANGUAGES or reason is not None:
            continue
        if language == 'console':
            code = _console_commands(code)
        runnable.append((line, 'python' if language == 'python' else 'bash', code))
    return runnable, errors


@pytest.mark.parametrize('page', pages(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_page_blocks_are_marked(page):
    _, errors = _runnable(page)
    assert not errors, f'{page.name}:\n' + '\n'.join(errors)


@pytest.mark.parametrize('page', pages(), ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_page_blocks_run(page, tmp_path):
    runnable, _ = _runnable(page)
    if not runnable:
        pytest.skip(f'{page.name} has no block to run')
    work = tmp_path / 'work'
    work.mkdir()
    for name in LINKED:
        (work / name).symlink_to(REPO_ROOT / name)
    blocks_file = tmp_path / 'blocks.json'
    blocks_file.write_text(json.dumps(runnable))
    driver = tmp_path / 'driver.py'
    driver.write_text(DRIVER)
    env = dict(os.environ)
    env['PYTHONPATH'] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get('PYTHONPATH')]))
    env['PATH'] = os.pathsep.join([os.path.dirname(sys.executable), env.get('PATH', '')])
    env['TF_CPP_MIN_LOG_LEVEL'] = '3'
    env['MPLBACKEND'] = 'Agg'
    try:
        done = subprocess.run(
            [sys.executable, str(driver), str(blocks_file), page.name],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        output = e.stdout.decode(errors='replace') if isinstance(e.stdout, bytes) else e.stdout
        started = re.findall(r'=== block at line \d+ \(\w+\)', output or '')
        pytest.fail(f'{page.name}: over {TIMEOUT_S} s, in {started[-1:] or "the first block"}')
    assert done.returncode == 0, (
        f'{page.relative_to(REPO_ROOT)}: {done.stdout[-4000:]}\n--- stderr:\n{done.stderr[-4000:]}'
    )


def test_collector_reads_the_markers():
    text = '\n'.join(
        [
            '```python',
            'x = 1',
            '```',
            '<!-- docs: no-run (needs a TPU) -->',
            '```bash',
            'train.sh',
            '```',
            '```text',
            'output',
            '```',
            '',
            '    indented',
            '```',
            'no language',
            '```',
            '<!-- docs: no-run () -->',
            '```sh',
            'x',
            '```',
        ]
    )
    blocks, errors = extract_blocks(text)
    assert [(b[1], b[3]) for b in blocks] == [
        ('python', None),
        ('bash', 'needs a TPU'),
        ('text', None),
        ('', None),
        ('sh', ''),
    ]
    assert len(errors) == 3, errors
    assert _console_commands('$ echo a \\\n  b\noutput\n$ ls') == 'echo a \\\n  b\nls'


def test_reference_is_current():
    """docs/reference.md is what `python -m efficientnetv2.docs_reference` prints."""
    done = subprocess.run(
        [sys.executable, '-m', 'efficientnetv2.docs_reference'],
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL='3'),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    committed = (REPO_ROOT / 'docs' / 'reference.md').read_text(encoding='utf-8')
    assert done.stdout == committed, (
        'docs/reference.md is stale: run `python -m efficientnetv2.docs_reference --write` and '
        'commit the result.'
    )


# Pages that other branches add; a link to them may come before the page.
PENDING_PAGES = set()


@pytest.mark.parametrize(
    'page',
    pages() + [REPO_ROOT / 'benchmarks' / 'RESULTS.md'],
    ids=lambda p: str(p.relative_to(REPO_ROOT)),
)
def test_relative_links_resolve(page):
    text = page.read_text(encoding='utf-8')
    text = re.sub(r'```.*?```', '', text, flags=re.S)  # Code is not links.
    text = re.sub(r'`[^`\n]*`', '', text)
    missing = []
    for target in re.findall(r'\]\(([^)\s]+)\)', text):
        if re.match(r'[a-z]+:', target) or target.startswith('#'):
            continue
        path = (page.parent / target.split('#', 1)[0]).resolve()
        relative = os.path.relpath(path, REPO_ROOT)
        if not path.exists() and relative not in PENDING_PAGES:
            missing.append(target)
    assert not missing, f'{page.name} links to missing files: {missing}'
