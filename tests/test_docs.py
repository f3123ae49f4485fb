"""The documentation site: every public name has an API entry, and the site builds
with `mkdocs build --strict` (broken links, unknown references and docstrings
that fail to render are errors)."""

import os
import pathlib
import re
import subprocess
import sys
import types

import spherejax as sj


ROOT = pathlib.Path(__file__).resolve().parent.parent


def _public_names() -> set[str]:
    names = getattr(sj, "__all__", None)
    if names is None:
        names = [
            n
            for n, v in vars(sj).items()
            if not n.startswith("_") and not isinstance(v, types.ModuleType)
        ]
    return set(names)


def _documented_names() -> set[str]:
    found = set()
    for page in (ROOT / "docs" / "api").glob("*.md"):
        found |= set(re.findall(r"^::: spherejax\.(\w+)\s*$", page.read_text(), re.M))
    return found


def test_every_public_name_has_an_api_entry():
    public = _public_names()
    assert len(public) > 50  # the namespace was read, not an empty list
    missing = sorted(public - _documented_names())
    assert not missing, (
        f"public names without `::: spherejax.Name` in docs/api: {missing}"
    )


def test_api_entries_name_public_objects():
    stale = sorted(_documented_names() - _public_names())
    assert not stale, f"docs/api entries for names spherejax does not export: {stale}"


def test_mkdocs_build_strict(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert (tmp_path / "api" / "solvers" / "index.html").exists()
