"""Entry point of the command line: parse, merge the config, run a subcommand."""

import sys

from .config import SPECS, merge
from .parser import build_parser, explicit_options


def main(argv=None) -> int:
    """Run `python -m spherejax ARGV`; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        section = args.command
        flags = {k: v for k, v in vars(args).items() if k in SPECS[section]}
        options = merge(section, args.config, flags)
        explicit = explicit_options(args, args.config, section)
        if section == "simulate":
            from .simulate import simulate

            simulate(options, explicit)
        elif section == "fit":
            from .fit import fit_command

            fit_command(options)
        elif section == "bench":
            from .bench import bench

            bench(options)
        elif section == "sweep":
            if options["x64"]:
                import jax

                jax.config.update("jax_enable_x64", True)
            if options["solver"] == "euler" and options["dt0"] is None:
                raise ValueError("--solver euler has no error estimate: give --dt0")
            from .sweep import run_sweep

            run_sweep(options)
    except ValueError as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0
