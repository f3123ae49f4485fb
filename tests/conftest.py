import itertools

import jax
import jax.random as jr
import pytest


jax.config.update("jax_enable_x64", True)


@pytest.fixture
def getkey():
    counter = itertools.count()

    def _getkey():
        return jr.PRNGKey(next(counter))

    return _getkey
