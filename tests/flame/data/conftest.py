import pytest


@pytest.fixture(scope="session")
def tok():
    """The embedded default tokenizer (EOS id 0)."""
    from flame.data import load_tokenizer

    return load_tokenizer(None)
