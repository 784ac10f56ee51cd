import pytest
import torch


def pytest_configure(config):
    # the compiled ops may not be built; their fallback warns once at import, which tests expect
    config.addinivalue_line("filterwarnings", "ignore:diffalign. compiled ops unavailable:RuntimeWarning")
    config.addinivalue_line("markers", "slow: takes more than ~20 s on 2 CPU cores")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
