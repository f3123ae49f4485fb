"""Entry point of the command line: parse, merge the config, run a subcommand.

The subcommand runs in a worker thread while the main thread waits, so Ctrl-C
(SIGINT, delivered to the main thread) is honoured at once, also in the middle of
a compiled solve: staged outputs are removed, `error: interrupted` is printed and
the exit code is 130. Every other failure is one line `error: ...` with the exit
code of `errors.classify`.
"""

import os
import sys
import threading

from . import output
from .config import SPECS, merge
from .errors import EXIT_INTERRUPTED, classify
from .parser import build_parser, explicit_options


def _run(args) -> None:
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
    else:
        from .sweep import run_sweep

        run_sweep(options)


def _in_worker(fn, *args):
    """Run `fn(*args)` in a daemon thread; its exception is re-raised here. The
    main thread waits in short, interruptible joins."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn(*args)
        except BaseException as e:  # handed to the main thread
            box["error"] = e

    worker = threading.Thread(target=target, name="spherejax-command", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.05)
    except KeyboardInterrupt:
        raise _Interrupted(worker) from None
    if "error" in box:
        raise box["error"]
    return box.get("result")


class _Interrupted(Exception):
    def __init__(self, worker):
        super().__init__("interrupted")
        self.worker = worker


def main(argv=None) -> int:
    """Run `python -m spherejax ARGV`; returns the exit code (see `errors`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    output.reset()
    worker = None
    try:
        _in_worker(_run, args)
        return 0
    except (KeyboardInterrupt, _Interrupted) as e:
        worker = getattr(e, "worker", None)
        output.cancel()
        print("error: interrupted; partial outputs removed", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except BaseException as e:
        output.discard_all()
        code, message = classify(e)
        print(f"error: {message}", file=sys.stderr)
        return code
    if worker is not None and worker.is_alive():
        # the worker is inside a compiled computation that cannot be stopped:
        # leave now rather than wait for it (daemon threads and XLA at exit)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
