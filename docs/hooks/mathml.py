"""mkdocs hook: TeX to MathML at build time, so that the site's mathematics renders
without JavaScript or a network connection (browsers draw MathML natively).

`pymdownx.arithmatex` (generic mode) marks the maths in pages and docstrings as
`<span class="arithmatex">` and `<div class="arithmatex">` elements holding the TeX;
this hook replaces each with the MathML of `latex2mathml`. Display formulas written
inside a paragraph (`... text $$ formula $$ text ...`) are rendered as display
formulas too. A formula that does not convert fails the build.
"""

import html
import logging
import re

from latex2mathml.converter import convert


log = logging.getLogger("mkdocs.hooks.mathml")

_DISPLAY_IN_TEXT = re.compile(
    r'\$<span class="arithmatex">\\\((.*?)\\\)</span>\$', re.S
)
_INLINE = re.compile(r'<span class="arithmatex">\\\((.*?)\\\)</span>', re.S)
_BLOCK = re.compile(r'<div class="arithmatex">\\\[(.*?)\\\]</div>', re.S)
_RAW_DISPLAY = re.compile(r"\$\$(.+?)\$\$", re.S)
_CODE = re.compile(r"(<pre.*?</pre>|<code.*?</code>)", re.S)

# TeX that the converter renders poorly, rewritten: `\mathtt` (per-letter italics)
# to `\texttt`; a thin space after a function name followed by a symbol
# (`\cos\theta`), which TeX puts there and MathML does not
_FUNCTIONS = "cos|sin|tan|cot|log|ln|exp|arccos|arcsin|arctan|det|dim|ker|sup|inf"
_REWRITES = [
    (re.compile(r"\\mathtt\{"), r"\\texttt{"),
    (
        re.compile(
            rf"\\({_FUNCTIONS})(?![A-Za-z])\s*"
            r"(?=[A-Za-z0-9]|\\(?!left|right|big|Big|bigg|Bigg|[,;:! ]))"
        ),
        r"\\\1\\,",
    ),
]


class MathError(ValueError):
    pass


def _mathml(tex: str, display: bool, where: str) -> str:
    tex = html.unescape(tex).strip()
    for pattern, repl in _REWRITES:
        tex = pattern.sub(repl, tex)
    try:
        out = convert(tex, display="block" if display else "inline")
    except Exception as err:  # noqa: BLE001 - any failure fails the build
        raise MathError(f"{where}: cannot convert {tex!r} to MathML: {err}") from err
    return out


def _blocks(tex: str, where: str) -> str:
    # `$$a$$` directly followed by `$$b$$` reaches here as one block "a$$ $$b"
    return "".join(_mathml(t, True, where) for t in re.split(r"\$\$\s*\$\$", tex))


def _convert_text(text: str, where: str) -> str:
    text = _DISPLAY_IN_TEXT.sub(lambda m: _mathml(m.group(1), True, where), text)
    text = _BLOCK.sub(lambda m: _blocks(m.group(1), where), text)
    text = _INLINE.sub(lambda m: _mathml(m.group(1), False, where), text)
    text = _RAW_DISPLAY.sub(lambda m: _mathml(m.group(1), True, where), text)
    return text


def on_page_content(html_text, page, config, files):
    where = page.file.src_uri
    parts = _CODE.split(html_text)
    # even indices: outside code; odd: <pre>/<code> blocks, left alone
    return "".join(
        part if i % 2 else _convert_text(part, where) for i, part in enumerate(parts)
    )
