import itertools
import os

import jax
import jax.random as jr
import pytest


jax.config.update("jax_enable_x64", True)
# Opt-in strict dtype promotion (as diffrax's test configuration has it): set
# SPHEREJAX_STRICT_PROMOTION=1 to run the tests with implicit promotions as errors.
if os.environ.get("SPHEREJAX_STRICT_PROMOTION") == "1":
    jax.config.update("jax_numpy_dtype_promotion", "strict")


def pytest_collection_modifyitems(config, items):
    # executed notebooks are slow (each runs a full example): `-m "not slow"` skips
    # them for a quick run; the plain test command still runs them
    for item in items:
        if item.path.suffix == ".ipynb":
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def getkey():
    counter = itertools.count()

    def _getkey():
        return jr.PRNGKey(next(counter))

    return _getkey
