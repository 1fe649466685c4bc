import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The method's tests use tiny tensors: intra-op threads only add spin-waits, badly so on a
    shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
