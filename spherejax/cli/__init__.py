"""Command line: `python -m spherejax {simulate,sweep,fit,bench} ...`.

The application around the library: argument parsing and TOML configs
(`config`), input files (`inputs`), one module per subcommand (`simulate`,
`sweep`, `fit`, `bench`), figures (`plots`) and output files (`output`). The
library itself (`import spherejax as sj`) does not depend on this package.
See `docs/cli.md`.
"""

from .app import main as main


__all__ = ["main"]
