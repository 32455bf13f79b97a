"""Reading a checkpoint back (``medseg_platform.engine.checkpoint``): every damaged file is one clear error."""

from __future__ import annotations

import pytest
import torch

from medseg_platform.engine.checkpoint import load_checkpoint, save_checkpoint
from medseg_platform.errors import MedsegError


@pytest.mark.parametrize("length", [0, 10, 1_000, 50_000, 100_000])
def test_a_checkpoint_cut_short_anywhere_is_one_error_that_names_it(tmp_path, length):
    """A robustness probe: cut to 50 000 bytes, ``torch.load`` raised ``OSError: Invalid argument`` (a zip shorter than
    its end-of-directory search window), which the trial treated as a worker crash and retried, naming no file."""
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 3, "model": {"w": torch.arange(200_000, dtype=torch.float32)}})
    data = path.read_bytes()
    assert len(data) > length
    path.write_bytes(data[:length])
    with pytest.raises(MedsegError) as caught:
        load_checkpoint(path)
    assert str(caught.value).startswith(f"{path}: unreadable checkpoint (")
    assert str(caught.value).endswith("delete it to start this stage or trial over")


def test_a_missing_or_unreadable_checkpoint_says_so(tmp_path):
    with pytest.raises(MedsegError, match="cannot be opened .*check that the file is there and readable"):
        load_checkpoint(tmp_path / "absent.pt")


def test_a_whole_checkpoint_reads_back(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"step": 3, "model": {"w": torch.ones(4)}})
    state = load_checkpoint(path)
    assert state["step"] == 3 and torch.equal(state["model"]["w"], torch.ones(4))


def test_cuda_random_states_saved_with_another_device_count_restore_the_current_device_and_warn(monkeypatch):
    """A trial checkpointed with one visible GPU and resumed where the process sees two restored nothing without a word
    (the GPU-path review); now the device it trains on gets the saved state, and a warning says so. Spied on the CPU."""
    from medseg_platform.engine import checkpoint

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append(("one", int(state[0]), device)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: calls.append(("all", len(states))))
    saved = [torch.tensor([7], dtype=torch.uint8)]
    with pytest.warns(UserWarning, match=r"CUDA random states of 1 device\(s\), this process sees 2: only device 1's"):
        checkpoint._set_cuda_rng_states(saved)
    assert calls == [("one", 7, 1)]
    calls.clear()
    checkpoint._set_cuda_rng_states(saved * 2)  # the same device count: every state, as before
    assert calls == [("all", 2)]
