"""CpuShare: each training keeps cores // (live nanovlm trainings) threads, and gives them back at the end."""
import os

import torch

from nanovlm import cpu_share
from nanovlm.cpu_share import CpuShare


def test_a_live_peer_halves_the_threads_and_a_dead_one_is_forgotten(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_share, "REGISTRY", tmp_path)
    monkeypatch.setattr(cpu_share, "usable_cores", lambda: 4)
    torch.set_num_threads(4)
    (tmp_path / str(os.getppid())).touch()                  # a live process: the test runner's parent
    (tmp_path / "999999999").touch()                        # no such process: a training that was killed
    share = CpuShare(check_every=1)
    assert torch.get_num_threads() == 2
    assert not (tmp_path / "999999999").exists() and (tmp_path / str(os.getpid())).exists()
    (tmp_path / str(os.getppid())).unlink()                 # the other training ends
    share.update(step=1)
    assert torch.get_num_threads() == 4
    share.close()
    assert not (tmp_path / str(os.getpid())).exists() and torch.get_num_threads() == 4


def test_never_below_one_thread_and_never_above_torchs_choice(tmp_path, monkeypatch):
    monkeypatch.setattr(cpu_share, "REGISTRY", tmp_path)
    monkeypatch.setattr(cpu_share, "usable_cores", lambda: 2)
    torch.set_num_threads(1)
    for _ in range(3):
        (tmp_path / str(os.getppid())).touch()
    share = CpuShare()
    assert torch.get_num_threads() == 1
    share.close()
    torch.set_num_threads(2)
