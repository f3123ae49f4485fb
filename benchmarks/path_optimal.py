"""Path-optimal training: the kinetic regulariser's effect on accuracy, solver cost
(test NFE at rtol 1e-5), training time, kinetic action and the Euler–Lagrange
residual of the trained flow, on the digits and byte-level language tasks.

    PYTHONPATH=.:benchmarks python benchmarks/path_optimal.py --out FILE.json

Every configuration of a task starts from the same initial model (same seed), sees
the same batches and has the same step budget; only `lambda_kinetic` (and, for one
digits row, `lambda_jacobian`) changes. Each line prints the figures and their
ratios to the `lambda_kinetic = 0` run of the same process. `--quick` is a smoke
test (a few steps).
"""

import argparse
import datetime
import json
import math
import platform
import time

import jax


jax.config.update("jax_enable_x64", True)

import jax.random as jr
import numpy as np
import optax
from _common import header

import spherejax as sj
from spherejax import training as T


def run_task(name, build, sweep, *, steps, batch_size, lr, test_size, el_size):
    model, train, test = build(jr.PRNGKey(0))
    test = (test[0][:test_size], test[1][:test_size])
    optimizer = optax.adam(lr)
    solve_train = dict(rtol=1e-3, atol=1e-5)  # training solves; tests at 1e-5
    untrained = T.flow_residual(model, test[0][:el_size])
    print(f"{name}: untrained kinetic EL residual {untrained:.3f}", flush=True)
    rows, ref = [], None
    common = dict(optimizer=optimizer, batch_size=batch_size, key=jr.PRNGKey(1))
    for lj in sorted({lj for _, lj in sweep}):  # compile outside the timings
        T.train(model, train, steps=1, lambda_jacobian=lj, **common, **solve_train)
    for lk, lj in sweep:
        t0 = time.perf_counter()
        run = T.train(
            model,
            train,
            steps=steps,
            lambda_kinetic=lk,
            lambda_jacobian=lj,
            **common,
            **solve_train,
        )
        seconds = time.perf_counter() - t0
        ev = T.evaluate(run.model, test, rtol=1e-5, atol=1e-7)
        row = {
            "lambda_kinetic": lk,
            "lambda_jacobian": lj,
            "test_nfe": ev["nfe"],
            "train_seconds": seconds,
            "kinetic_action": ev["kinetic"],
            "el_residual": T.flow_residual(run.model, test[0][:el_size]),
            "el_residual_tracking": T.flow_residual(
                run.model,
                test[0][:el_size],
                lagrangian=sj.variational.Tracking(run.model.field),
            ),
            "train_nfe_last": float(
                np.mean(run.history["nfe"][-max(1, steps // 10) :])
            ),
        }
        if name == "digits":
            row["test_accuracy"] = ev["accuracy"]
            score, label = ev["accuracy"], "accuracy"
        else:
            row["test_bits_per_byte"] = ev["loss"] / math.log(2)
            score, label = row["test_bits_per_byte"], "bits/byte"
        rows.append(row)
        ref = ref or row
        rs = ref.get("test_accuracy", ref.get("test_bits_per_byte"))
        print(
            f"{name} lambda_k={lk:g} lambda_j={lj:g}: {label} {score:.4f} "
            f"(x{score / rs:.3f}), test NFE {row['test_nfe']:.1f} "
            f"(x{row['test_nfe'] / ref['test_nfe']:.2f}), train "
            f"{seconds:.0f} s (x{seconds / ref['train_seconds']:.2f}), kinetic "
            f"{row['kinetic_action']:.3g} "
            f"(x{row['kinetic_action'] / ref['kinetic_action']:.3f}), "
            f"EL residual kinetic {row['el_residual']:.3f} / tracking "
            f"{row['el_residual_tracking']:.1e}",
            flush=True,
        )
    return rows, untrained


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--jacobian", action="store_true", help="add a digits row with lambda_j > 0"
    )
    args = parser.parse_args()
    print(header("path_optimal.py"), flush=True)
    q = args.quick
    digits_sweep = [
        (0.0, 0.0),
        (0.003, 0.0),
        (0.01, 0.0),
        (0.03, 0.0),
        (0.1, 0.0),
        (0.3, 0.0),
    ]
    bytes_sweep = [(0.0, 0.0), (0.01, 0.0), (0.1, 0.0)]
    if args.jacobian:
        digits_sweep.append((0.03, 0.01))
    tasks, untrained = {}, {}
    tasks["digits"], untrained["digits"] = run_task(
        "digits",
        T.digits_task,
        digits_sweep[:2] if q else digits_sweep,
        steps=5 if q else 300,
        batch_size=64,
        lr=1e-2,
        test_size=449,
        el_size=4 if q else 32,
    )
    tasks["bytes"], untrained["bytes"] = run_task(
        "bytes",
        lambda key: T.bytes_task(key, length=16, d=16, heads=2, hidden=32),
        bytes_sweep[:2] if q else bytes_sweep,
        steps=5 if q else 150,
        batch_size=16,
        lr=1e-2,
        test_size=64 if q else 256,
        el_size=2 if q else 8,
    )
    result = {
        "tasks": tasks,
        "el_residual_untrained": untrained,
        "budget": {
            "digits": "300 Adam steps (lr 1e-2), batch 64, d=16, 2 heads, 17 tokens",
            "bytes": "150 Adam steps (lr 1e-2), batch 16, 16-byte windows, d=16, "
            "2 heads + 32 tanh units, test on 256 windows",
            "solves": "training at rtol 1e-3, atol 1e-5; test at rtol 1e-5, atol 1e-7 "
            "(Tsit5, tokens-only error norm)",
        },
        "machine": f"{platform.machine()} CPU, {platform.python_version()}, "
        f"jax {jax.__version__}, backend {jax.default_backend()}",
        "date": datetime.date.today().isoformat(),
    }
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
