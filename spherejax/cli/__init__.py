"""Command line: `python -m spherejax {simulate,sweep,fit,bench} ...`.

The application around the library: the entry point (`app`), argument parsing
(`parser`), option values and TOML configs (`values`, `config`), input files
(`inputs`), one module per subcommand (`simulate`, `sweep`, `fit`, `bench`; a
sweep's cells and folder in `cells`, `folder`), checks before a solve
(`preflight`), figures (`plots`), output files (`output`, written whole or not
at all by `files`) and exit codes (`errors`). It uses only the public namespace
(`import spherejax as sj`), and the library does not depend on it. See
`docs/cli.md`.
"""

from .app import main as main


__all__ = ["main"]
