"""`run_all.py --quick` for two versions of the code, side by side in one command.

    python benchmarks/ab_quick.py --before REV [--after REV] [--rounds 3]
                                  [--out FILE.json]

Each version is exported from git (`git archive`) into a temporary folder and its
own `benchmarks/run_all.py --quick` runs with that folder first on `PYTHONPATH`,
the two versions alternating (`before, after, after, before, ...`) so that drifts
in the machine's load fall on both. Printed per figure (a ratio that
`run_all.py` reports: field / floor, ensemble time / floor, gradient / forward):
the median over rounds of each version and `after / before`. On a shared machine,
`after / before` within about 1.3 of 1 is noise (see `benchmarks/README.md`).
`--after` defaults to the working tree.
"""

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile


ROOT = pathlib.Path(__file__).resolve().parent.parent


def _export(rev: str, dest: pathlib.Path) -> pathlib.Path:
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", rev], cwd=ROOT, check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest


def figures(doc: dict) -> dict[str, float]:
    """The ratios of one `run_all.py` JSON document, by name."""
    out: dict[str, float] = {}
    for row in doc.get("attention", []):
        for key, value in row.items():
            if "/" in key and isinstance(value, (int, float)):
                out[f"attention {row['dtype']} n={row['n']} {key}"] = float(value)
    for row in doc.get("field_small", []):
        for key, value in row.items():
            if key.endswith("/floor3"):
                out[f"field_small b={row['b']} d={row['d']} {key}"] = float(value)
    for name, row in doc.get("ensemble", {}).get("rows", {}).items():
        if "time/floor" in row:
            out[f"ensemble {name} time/floor"] = float(row["time/floor"])
    for row in doc.get("grad_cost", []):
        for key in ("grad/forward", "grad_replay/forward"):
            if key in row:
                out[f"grad_cost {row['dtype']} {key}"] = float(row[key])
    return out


def run(tree: pathlib.Path, out: pathlib.Path) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, "benchmarks/run_all.py", "--quick", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(
            f"run_all.py --quick failed in {tree}:\n{proc.stdout[-3000:]}"
            f"\n{proc.stderr[-3000:]}"
        )
    return figures(json.loads(out.read_text()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", required=True, help="git revision of the reference")
    p.add_argument("--after", default=None, help="git revision (default: work tree)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default=None, help="JSON file for the figures")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="spherejax-ab-") as tmp:
        trees = {"before": _export(a.before, pathlib.Path(tmp) / "before")}
        trees["after"] = (
            ROOT if a.after is None else _export(a.after, pathlib.Path(tmp) / "after")
        )
        samples: dict[str, dict[str, list[float]]] = {"before": {}, "after": {}}
        for r in range(a.rounds):
            order = ("before", "after") if r % 2 == 0 else ("after", "before")
            for which in order:
                figs = run(trees[which], pathlib.Path(tmp) / f"{which}{r}.json")
                for k, v in figs.items():
                    samples[which].setdefault(k, []).append(v)
                print(f"# round {r} {which}: {len(figs)} figures", flush=True)
    rows = {}
    for key in sorted(set(samples["before"]) & set(samples["after"])):
        b = statistics.median(samples["before"][key])
        f = statistics.median(samples["after"][key])
        rows[key] = {"before": b, "after": f, "after/before": f / b}
        print(f"{key:60s} before={b:8.3f} after={f:8.3f} after/before={f / b:5.2f}")
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(
                {"before": a.before, "after": a.after or "work tree", "rows": rows},
                fh,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
