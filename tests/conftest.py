import os

# Tests never reach a hub: without this, a hub id that is not cached (a reward's default tokenizer, say)
# makes huggingface_hub retry for minutes on a machine without network before failing.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# train.mixed_precision "auto" (the default) means float32 in the tests on every CPU, so their numbers do not
# depend on whether this machine has bf16 units (tests/trainer/test_precision.py checks the rule itself)
os.environ.setdefault("DIFFALIGN_AUTO_PRECISION", "no")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_configure(config):
    # the compiled ops may not be built; their fallback warns once at import, which tests expect
    config.addinivalue_line("filterwarnings", "ignore:diffalign. compiled ops unavailable:RuntimeWarning")
    config.addinivalue_line("markers", "slow: takes more than ~20 s on 2 CPU cores")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


_THREADS = torch.get_num_threads()  # the session's thread count, before any test or fixture changes it


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """A test (or a module fixture) that sets torch's thread count must not change later tests: the trainer logs
    ``threads``, and a run's metrics then differ from a subprocess's (test_resume_after_sigkill). Restored to the
    session's count after every test (a module fixture runs before this one, so the count at its start may
    already be changed)."""
    yield
    if torch.get_num_threads() != _THREADS:
        torch.set_num_threads(_THREADS)
