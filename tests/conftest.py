import sys
from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).parent
FIXTURES = TESTS / "fixtures" / "videogpt-reference"
sys.path.insert(0, str(TESTS))

# The golden outputs were computed on CPU in float32; keep our arithmetic on the same footing.
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    return FIXTURES


@pytest.fixture
def fresh_kernels():
    """The compiled kernels looked up again (a process caches the ones it built, or could not), and again after
    the test."""
    from models import row_attention, row_ops

    def forget() -> None:
        row_attention._checked.cache_clear()
        row_ops._checked.cache_clear()

    forget()
    yield
    forget()


@pytest.fixture
def favour_products(monkeypatch):
    """favour_products(way): row_tile chooses afresh, timing the ways it finds exact as if the products with
    `way` set (a Products flag) were the fastest, so that a test of that way does not depend on this
    machine's timing (on a small prior another way may be faster by more than WAY_SLACK)."""
    from models import decoding

    def favour(way: str) -> None:
        monkeypatch.setattr(decoding, "_ROW_TILES", {})
        monkeypatch.setattr(decoding, "_step_times", lambda model, products: {
            timed: 1.0 if getattr(products, way) else 2.0 for timed in decoding.TIMED_ROWS})
    return favour
