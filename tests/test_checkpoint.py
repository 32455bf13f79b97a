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


def test_a_rank_resumes_from_its_own_state_of_the_same_step_else_from_rank_0s_with_a_warning(tmp_path, capsys):
    """The rank files of a multi-worker checkpoint (end to end in tests/test_ddp.py): a rank's own state of the
    checkpoint's step replaces rank 0's objective state and random streams; one of another step (the run stopped
    between the two writes) is not used, and the rank says that it resumes from rank 0's banks."""
    from medseg_platform.engine import DistContext
    from medseg_platform.engine.checkpoint import (rank_state_path, remove_rank_state, restore_training_state, save_rank_state,
                                                   training_state)

    def objective(fill: float) -> torch.nn.Module:
        module = torch.nn.Linear(2, 2)
        module.register_buffer("queue", torch.full((3,), fill))  # a rank's own memory bank
        return module

    rank0, rank1 = objective(0.0), objective(1.0)
    optimizer = torch.optim.SGD(rank0.parameters(), lr=0.1)
    gen0, gen1 = torch.Generator().manual_seed(10), torch.Generator().manual_seed(11)
    state = training_state(4, rank0, optimizer, gen0)
    save_rank_state(tmp_path, DistContext(0, 2), 4, rank0, gen0)  # nothing on rank 0
    assert not rank_state_path(tmp_path, 0, 4).exists()
    save_rank_state(tmp_path, DistContext(1, 2), 4, rank1, gen1)
    expected_draw = torch.randint(0, 1 << 30, (1,), generator=torch.Generator().set_state(gen1.get_state())).item()
    for own_step, own_queue in ((4, 1.0), (2, 0.0)):
        if own_step != 4:
            rank_state_path(tmp_path, 1, 4).unlink()
            save_rank_state(tmp_path, DistContext(1, 2), own_step, rank1, gen1)
        resumed, generator = objective(5.0), torch.Generator()
        step = restore_training_state(state, resumed, torch.optim.SGD(resumed.parameters(), lr=0.1), generator, seed=3,
                                      dist=DistContext(1, 2), rank_folder=tmp_path)
        assert step == 4 and torch.equal(resumed.queue, torch.full((3,), own_queue))
        draw = torch.randint(0, 1 << 30, (1,), generator=generator).item()
        err = capsys.readouterr().err
        if own_step == 4:
            assert draw == expected_draw and err == ""
        else:
            assert draw != expected_draw
            assert err.startswith("[rank 1] warning: no state of its own at step 4 (of step 2 only); it resumes with rank 0's")
    # at the last step nothing is left to train: no warning (a rank removes its files when its steps end)
    remove_rank_state(tmp_path, DistContext(1, 2))
    assert list(tmp_path.iterdir()) == []
    restore_training_state(state, objective(5.0), torch.optim.SGD(objective(5.0).parameters(), lr=0.1), torch.Generator(),
                           seed=3, dist=DistContext(1, 2), rank_folder=tmp_path, max_steps=4)
    assert capsys.readouterr().err == ""


def test_a_rank_keeps_its_state_of_the_checkpoint_on_disk_until_rank_0_writes_the_next(tmp_path):
    """Rank 1 writes its state of step S at once, while rank 0 still validates before its checkpoint of S: the file of
    the step before stays until rank 1 writes the one after S (by then rank 0's checkpoint of S is on disk)."""
    from medseg_platform.engine import DistContext
    from medseg_platform.engine.checkpoint import save_rank_state

    module, generator = torch.nn.Linear(2, 2), torch.Generator().manual_seed(1)
    for step, kept in ((4, ["4"]), (8, ["4", "8"]), (12, ["12", "8"]), (16, ["12", "16"])):
        save_rank_state(tmp_path, DistContext(1, 2), step, module, generator)
        assert sorted(p.name[len("rank1_state-"):-3] for p in tmp_path.iterdir()) == kept
