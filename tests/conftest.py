"""Test-wide setup: offline hub, deterministic threads, repository root importable."""
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
TESTS = os.path.dirname(os.path.abspath(__file__))
if TESTS not in sys.path:  # so tests can `import fixtures...`
    sys.path.insert(0, TESTS)

import torch  # noqa: E402

torch.set_num_threads(min(2, os.cpu_count() or 1))

# Test-only: make torchvision importable (Qwen/SmolVLM processors) before transformers first looks for it.
import fixtures.tvshim  # noqa: E402,F401

import pytest  # noqa: E402


@pytest.fixture
def one_torch_thread():
    """One torch thread for the test, restored afterwards; modules of GRPO sessions take it for all their tests
    with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
