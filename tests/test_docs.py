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
    pattern = rf"^::: {re.escape(prefix)}\.([A-Za-z]\w*)\s*$"  # not private modules
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
    _check_offline_maths(tmp_path)
    _check_signatures(tmp_path)


def _text_outside_code(page: str) -> str:
    return re.sub(r"<pre.*?</pre>|<code.*?</code>", "", page, flags=re.S)


def _check_offline_maths(site: pathlib.Path):
    # the maths is MathML written at build time: no script from the network, no TeX
    # left for a renderer (stray `$`, `\(`, `\[`) in the text of any page
    pages = sorted(site.rglob("*.html"))
    assert len(pages) > 20
    for html_file in pages:
        page = html_file.read_text()
        assert not re.search(r"<script[^>]+src=\"(https?:)?//", page), html_file
        text = _text_outside_code(page)
        for leftover in ("$$", "\\(", "\\[", 'class="arithmatex"'):
            assert leftover not in text, (html_file, leftover)
    for name in ("maths", "mean_field", "api/mean_field", "api/integrate"):
        page = (site / name / "index.html").read_text()
        assert page.count('<math xmlns="http://www.w3.org/1998/Math/MathML"') > 10
        assert 'display="block"' in page, name
        assert "$" not in _text_outside_code(page).replace("&#x00024;", ""), name


def _check_signatures(site: pathlib.Path):
    # constructors of equinox modules (dataclass fields) and functions show their
    # parameters with annotations, shapes included
    expect = {
        "api/mean_field": ["CircleDensity(", "diffusion:", "SphereDensity("],
        "api/action": ["ShootingLoss(", "dt0:", "adjoint:", "rtol:", "atol:"],
        "api/energy": [
            "cluster_count(",
            "separation: float = 1.0",
            'Float[ArrayLike, "n d"]',
        ],
        "api/manifolds": ["Sphere(", "radius:"],
        "api/fields": ["SelfAttention(", "Q:", "normalization:"],
    }
    for name, needles in expect.items():
        page = (site / name / "index.html").read_text()
        sigs = " ".join(re.findall(r'class="doc-signature.*?</pre>', page, re.S))
        text = re.sub(r"<[^>]+>", "", sigs)
        for needle in needles:
            assert needle in text, (name, needle)


def test_examples_lists_every_notebook():
    listed = (ROOT / "docs" / "examples.md").read_text()
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert f"`{nb.name}`" in listed, nb.name


def test_no_network_scripts_in_config():
    config = (ROOT / "mkdocs.yml").read_text()
    assert "http" not in config.split("nav:")[0].replace("repo_url: https://", ""), (
        "a script or stylesheet from the network in mkdocs.yml"
    )
