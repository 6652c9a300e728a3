import pytest
import torch


@pytest.fixture
def restore_torch_threads():
    """A training script's main() and the handler's WorkerThreads set torch's thread count for the
    whole process; put it back for the tests after."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
