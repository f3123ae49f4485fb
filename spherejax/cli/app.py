"""Entry point of the command line: parse, merge the config, run a subcommand.

The subcommand runs in a worker thread while the main thread waits, so Ctrl-C
(SIGINT, delivered to the main thread) is honoured at once, also in the middle of
a compiled solve: staged outputs are removed, `error: interrupted` is printed and
the exit code is 130. Every other failure is one line `error: ...` with the exit
code of `errors.classify`.
"""

import os
import signal
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
    main thread waits on an event in short, interruptible waits (not
    `Thread.join`, whose bookkeeping a KeyboardInterrupt can corrupt).

    While it waits, SIGINT only sets a flag, which the wait loop checks every 50
    ms: Python's own handler raises `KeyboardInterrupt` wherever the main thread
    happens to be, and raised inside a weakref callback or a `__del__` that
    exception is printed and dropped, so the command would run on. A SIGINT that
    the process inherited as ignored stays ignored, as Python leaves it."""
    box: dict = {}
    done = threading.Event()
    interrupted = threading.Event()

    def target():
        try:
            box["result"] = fn(*args)
        except BaseException as e:  # handed to the main thread
            box["error"] = e
        finally:
            done.set()

    previous = None
    if (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    ):
        previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    threading.Thread(target=target, name="spherejax-command", daemon=True).start()
    try:
        while not done.wait(0.05):
            if interrupted.is_set():
                raise _Interrupted(done)
    except KeyboardInterrupt:
        raise _Interrupted(done) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    if "error" in box:
        raise box["error"]
    return box.get("result")


class _Interrupted(Exception):
    def __init__(self, done: threading.Event):
        super().__init__("interrupted")
        self.done = done


def main(argv=None) -> int:
    """Run `python -m spherejax ARGV`; returns the exit code (see `errors`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    output.reset()
    done = None
    try:
        _in_worker(_run, args)
        return 0
    except (KeyboardInterrupt, _Interrupted) as e:
        done = getattr(e, "done", None)
        output.cancel()
        print("error: interrupted; partial outputs removed", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except BaseException as e:
        output.discard_all()
        code, message = classify(e)
        print(f"error: {message}", file=sys.stderr)
        return code
    if done is None or not done.is_set():
        # the worker may be inside a compiled computation that cannot be stopped:
        # leave now (interpreter shutdown would tear down a thread inside XLA)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
