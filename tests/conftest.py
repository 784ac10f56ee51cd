import warnings

import pytest
import torch

# the compiled ops may not be built here; their fallback warns once, which is expected in tests
warnings.filterwarnings("ignore", message="diffalign: compiled ops unavailable", category=RuntimeWarning)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
