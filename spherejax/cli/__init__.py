"""Command line: `python -m spherejax {simulate,sweep,fit,bench} ...`.

The application around the library: the entry point (`app`), argument parsing
(`parser`), option values and TOML configs (`values`, `config`), input files
(`inputs`), one module per subcommand (`simulate`, `sweep`, `fit`, `bench`; a
sweep's cells and folder in `cells`, `folder`), checks before a solve
(`preflight`), figures (`plots`), output files (`output`) and exit codes
(`errors`). The library itself (`import spherejax as sj`) does not depend on
this package. See `docs/cli.md`.
"""

from .app import main as main


__all__ = ["main"]
