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
