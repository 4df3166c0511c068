"""Every example in docs/ runs, and shell examples print what the page says.

Fenced blocks:

- ``python``: executed in one namespace per page, in a fresh directory; a block
  whose first line is ``# name.py`` is written to that file instead (importable);
  one whose first line is ``# requires: MODULE`` runs only where MODULE imports
  (the examples of an extra; later blocks must not depend on it).
- ``toml``/``yaml`` whose first line is ``# name.ext``: written to that file;
  ``json`` too, without that line.
- ``console``: each ``$ command`` runs in a shell; the lines after it are the
  expected output, where ``...`` stands for any text (a whole ``...`` line for
  any number of lines).
- ``text``: not run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
FENCE = re.compile(r"^```(\w+)[^\n]*\n(.*?)^```", re.M | re.S)
#: A python block that starts ``# requires: torch`` runs only where torch imports.
REQUIRES = re.compile(r"^# requires: ([\w.]+)\n")


def _importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


FILE_HEADER = re.compile(r"^# ([\w.-]+\.(?:py|toml|yaml|yml|jsonl|json))\n")


def blocks(page: Path) -> list[tuple[str, str, int]]:
    text = page.read_text()
    return [(m[1], m[2], text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)]


def expected_pattern(lines: list[str]) -> re.Pattern[str]:
    parts = []
    for line in lines:
        if line.strip() == "...":
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            parts.append(".*".join(re.escape(p) for p in line.split("...")) + r"\n")
    return re.compile("".join(parts))


def run_console(block: str, cwd: Path, where: str) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    commands: list[tuple[str, list[str]]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], []))
        elif commands:
            commands[-1][1].append(line)
    for command, expected in commands:
        out = subprocess.run(
            command, shell=True, cwd=cwd, env=env, capture_output=True, text=True, timeout=600
        )
        assert out.returncode == 0, f"{where}: `{command}` failed:\n{out.stderr}"
        if expected:
            pattern = expected_pattern(expected)
            assert pattern.fullmatch(out.stdout), (
                f"{where}: `{command}` printed:\n{out.stdout}\nexpected:\n" + "\n".join(expected)
            )


PAGES = sorted(DOCS.glob("*.md"))


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_examples_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    ran = skipped = 0
    for lang, body, line in blocks(page):
        where = f"docs/{page.name}:{line}"
        header = FILE_HEADER.match(body)
        if header and lang in ("python", "toml", "yaml"):
            (tmp_path / header[1]).write_text(body)
        elif header and lang == "json":  # JSON has no comments: the header is dropped
            (tmp_path / header[1]).write_text(body[header.end() :])
        elif lang == "python" and (needs := REQUIRES.match(body)) and not _importable(needs[1]):
            skipped += 1  # an extra's example, on a machine without the extra
            continue
        elif lang == "python":
            exec(compile(body, where, "exec"), namespace)
        elif lang == "console":
            run_console(body, tmp_path, where)
        else:
            continue
        ran += 1
    for name in [n for n in sys.modules if (tmp_path / f"{n}.py").exists()]:
        del sys.modules[name]
    # Every page runs something, unless all its examples need an extra this machine lacks.
    assert ran or skipped or page.name == "index.md"


def test_every_page_is_in_the_nav() -> None:
    config = (DOCS.parent / ".mkdocs.yml").read_text()
    for page in PAGES:
        assert f": {page.name}" in config, f"{page.name} is missing from .mkdocs.yml nav"
