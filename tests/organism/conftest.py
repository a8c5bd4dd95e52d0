import pytest

from memlens.core.model import preserved_weights


@pytest.fixture
def restored(organism):
    """The session's organism, with its original weights restored after the test."""
    with preserved_weights(organism.tl_model):
        yield organism
