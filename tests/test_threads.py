"""verify.threads: intra-op threads from the free cores; OMP_WAIT_POLICY=PASSIVE when oversubscribed; the
user's own settings win."""

import pytest

from verify import threads


@pytest.mark.parametrize("cores,load,own,free", [(2, 0.0, 0, 2), (2, 0.8, 0, 1), (2, 4.0, 0, 1), (8, 2.1, 0, 6),
                                                 (8, 3.0, 2, 7), (4, None, 0, 4)])
def test_free_cores(monkeypatch, cores, load, own, free):
    monkeypatch.setattr(threads, "load_1min", lambda: load)
    assert threads.free_cores(own, cores=cores) == free


@pytest.fixture
def clean_env(monkeypatch):
    for key in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", threads.ENV_FORCE):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 2)
    return monkeypatch


def test_oversubscribed_machine_gets_passive_waiting(clean_env):
    import os

    clean_env.setattr(threads, "load_1min", lambda: 4.0)
    record = threads.configure_before_torch_import(torch_imported=False)
    assert record["oversubscribed"] and record["set"] == {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1"}
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"


def test_too_late_after_import_torch_sets_nothing(clean_env):
    import os

    clean_env.setattr(threads, "load_1min", lambda: 4.0)
    record = threads.configure_before_torch_import(torch_imported=True)
    assert record["set"] == {} and "OMP_WAIT_POLICY" not in os.environ and "too late" in record["note"]
    assert "waiting policy unchanged" in threads.describe(record)


def test_idle_machine_keeps_the_defaults_and_the_users_values_win(clean_env):
    clean_env.setattr(threads, "load_1min", lambda: 0.1)
    assert threads.configure_before_torch_import(torch_imported=False)["set"] == {}
    clean_env.setattr(threads, "load_1min", lambda: 5.0)
    clean_env.setenv("OMP_WAIT_POLICY", "ACTIVE")
    record = threads.configure_before_torch_import(torch_imported=False)
    assert record["kept_user_values"] == {"OMP_WAIT_POLICY": "ACTIVE"} and "OMP_WAIT_POLICY" not in record["set"]


def test_apply_threads_follows_the_free_cores_and_vtp_threads(clean_env):
    import torch

    before = torch.get_num_threads()
    try:
        clean_env.setattr(threads, "load_1min", lambda: 1.0)
        assert threads.apply_threads()["threads"] == 1 and torch.get_num_threads() == 1
        clean_env.setenv(threads.ENV_FORCE, "2")
        assert threads.apply_threads() == {"threads": 2, "chosen_by": "VTP_THREADS=2", "torch_default": 1}
        clean_env.setenv(threads.ENV_FORCE, "off")
        assert "torch's default" in threads.apply_threads()["chosen_by"]
        threads.restore_threads({"torch_default": before})
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)
