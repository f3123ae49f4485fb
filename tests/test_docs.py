"""The documentation site: every public name has an API entry, and the site builds
with `mkdocs build --strict` (broken links, unknown references and docstrings
that fail to render are errors)."""

import importlib
import os
import pathlib
import pkgutil
import re
import subprocess
import sys
import types

import pytest

import spherejax as sj


ROOT = pathlib.Path(__file__).resolve().parent.parent


def _public_names(module: types.ModuleType = sj) -> set[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [
            n
            for n, v in vars(module).items()
            if not n.startswith("_") and not isinstance(v, types.ModuleType)
        ]
    return set(names)


def _documented_names(prefix: str = "spherejax") -> set[str]:
    found = set()
    pattern = rf"^::: {re.escape(prefix)}\.(\w+)\s*$"
    for page in (ROOT / "docs" / "api").glob("*.md"):
        found |= set(re.findall(pattern, page.read_text(), re.M))
    return found


# the library's public namespaces: the top and its topic subpackages (the command
# line, `spherejax.cli`, is the application and has its own guide)
NAMESPACES = ["spherejax"] + [
    f"spherejax.{m.name}"
    for m in pkgutil.iter_modules(sj.__path__)
    if not m.name.startswith("_") and m.name != "cli"
]


def test_namespaces_were_found():
    assert {"spherejax.mean_field", "spherejax.models"} <= set(NAMESPACES)
    assert len(_public_names()) > 20  # the top namespace was read


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_every_public_name_has_an_api_entry(namespace):
    public = _public_names(importlib.import_module(namespace))
    missing = sorted(public - _documented_names(namespace))
    assert not missing, (
        f"public names without `::: {namespace}.Name` in docs/api: {missing}"
    )


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_api_entries_name_public_objects(namespace):
    public = _public_names(importlib.import_module(namespace))
    stale = sorted(_documented_names(namespace) - public)
    assert not stale, f"docs/api entries for names {namespace} does not export: {stale}"


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
