"""Faults a long study meets: diverged runs, unreadable records, write failures, lock files."""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lightning_ttn.protocol import runner, store
from lightning_ttn.protocol.report import write_report
from lightning_ttn.protocol.schema import RunSpec, SweepConfig, candidate_dict, parse_config
from lightning_ttn.protocol.statistics import select_configurations
from lightning_ttn.training.record import RunRecord, provenance

MEASURED = ("val_acc_history", "best_epoch", "best_val_acc", "test_acc", "test_loss",
            "train_loss_history", "transforms", "kernel_health")


def strict_json(text: str) -> Any:
    """Parses JSON the way jq and JavaScript do: NaN and Infinity are errors."""
    def reject(token: str) -> None:
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=reject)


def tiny(tmp_path: Path, **overrides: Any) -> SweepConfig:
    raw = {
        "output_dir": str(tmp_path / "out"), "source": "embedded", "sizes": [10], "runs": 2,
        "epochs": 2, "val_videos": 10, "test_videos": 10, "accelerator": "cpu",
        "families": {"3DTTN": [{"name": "w4-14", "channels": [4, 14], "lr": 0.01}]},
    }
    raw.update(overrides)
    return parse_config(raw)


def fake_record(spec: RunSpec, acc: float, **fields: Any) -> RunRecord:
    return RunRecord(
        val_acc_history=[[1, acc]], best_epoch=1, best_val_acc=acc, test_acc=acc,
        num_parameters=1, run_id=spec.run_id, family=spec.family, run=spec.run,
        candidate=candidate_dict(spec.candidate), train_videos=spec.train_videos,
        recipe=spec.recipe.to_dict(), train_loss_history=[[1, 1.0]], **fields, **provenance(),
    )


# ----------------------------------------------------------------------------- divergence
def test_a_diverged_run_stops_at_once_and_writes_strict_json(tmp_path: Path) -> None:
    config = tiny(tmp_path, runs=1, epochs=6, val_every_n_epochs=3, max_grad_norm=None,
                  families={"3D": [{"name": "huge", "channels": [4, 14], "lr": 1.0e12}]})
    counts = runner.run_sweep(config, show_progress=False)
    assert counts["trained"] == 1
    path = next(store.runs_dir(config.output_dir).glob("*.json"))
    data = strict_json(path.read_text())  # no bare NaN tokens
    assert data["diverged"] is True
    epoch = data["diverged_epoch"]
    assert 1 <= epoch < 6
    # It stopped in the epoch it diverged: no epochs of NaN training after it.
    assert [e for e, _ in data["train_loss_history"]][-1] == epoch
    record = RunRecord.read(path)
    assert record.failed and math.isnan(record.train_loss_history[-1][1])


def test_a_diverged_candidate_is_never_selected_and_is_counted(tmp_path: Path) -> None:
    config = tiny(tmp_path, families={"3D": [{"name": "a", "channels": [4, 14], "lr": 0.1},
                                             {"name": "b", "channels": [4, 14], "lr": 0.2}]})
    runs_dir = store.runs_dir(config.output_dir)
    runs_dir.mkdir(parents=True)
    for spec in runner.plan_runs(config):
        # b has the better validation accuracy, but one of its runs diverged.
        diverged = spec.candidate.name == "b" and spec.run == 1
        record = fake_record(spec, 0.9 if spec.candidate.name == "b" else 0.5,
                             diverged=diverged, diverged_epoch=1 if diverged else None)
        store.write_record(config.output_dir, spec, record)
    store.prepare_output_dir(config)
    selection = select_configurations(store.load_records(config.output_dir))[("3D", 10)]
    assert selection.candidate == "a"
    assert selection.candidates["b"].diverged == 1
    assert "b 0.900 (1 diverged)" in write_report(config.output_dir)


def test_ties_go_to_the_smaller_rate_then_the_smaller_multiplier(tmp_path: Path) -> None:
    config = tiny(tmp_path, families={"3DTTN": [
        {"name": "a_fast", "channels": [4, 14], "lr": 0.2, "transform_lr_scale": 1},
        {"name": "b_slow_x10", "channels": [4, 14], "lr": 0.1, "transform_lr_scale": 10},
        {"name": "c_slow_x1", "channels": [4, 14], "lr": 0.1, "transform_lr_scale": 1},
    ]})
    records = [fake_record(spec, 0.75) for spec in runner.plan_runs(config)]
    # By name order "a_fast" would win; the rule picks the smaller rate, then multiplier.
    assert select_configurations(records)[("3DTTN", 10)].candidate == "c_slow_x1"


# ----------------------------------------------------------------------------- unreadable records
def test_an_unreadable_record_is_set_aside_and_its_run_retrained(tmp_path: Path, capsys) -> None:
    config = tiny(tmp_path)
    runner.run_sweep(config, show_progress=False)
    spec = runner.plan_runs(config)[1]
    path = store.record_path(config.output_dir, spec)
    before = json.loads(path.read_text())
    path.write_text(path.read_text()[:100])  # truncated, e.g. by a partial copy
    assert not store.is_finished(config.output_dir, spec)
    counts = runner.run_sweep(config, show_progress=False)
    assert counts == {"total": 2, "finished_before": 1, "trained": 1, "held": 0}
    assert "unreadable run record moved to" in capsys.readouterr().err
    assert (store.unreadable_dir(config.output_dir) / path.name).exists()
    after = json.loads(path.read_text())
    assert {k: after[k] for k in MEASURED} == {k: before[k] for k in MEASURED}


def test_a_record_naming_another_run_does_not_count_as_finished(tmp_path: Path) -> None:
    config = tiny(tmp_path)
    first, second = runner.plan_runs(config)
    store.runs_dir(config.output_dir).mkdir(parents=True)
    store.record_path(config.output_dir, second).write_text(fake_record(first, 0.5).to_json())
    assert not store.is_finished(config.output_dir, second)
    assert store.set_aside_unreadable(config.output_dir, [first, second]) == [
        store.unreadable_dir(config.output_dir) / f"{second.run_id}.json"]


# ----------------------------------------------------------------------------- write failures
def fake_train(spec: RunSpec, config: SweepConfig) -> RunRecord:
    return fake_record(spec, 0.5)


def test_a_full_disk_gives_a_short_error_that_says_how_to_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    config = tiny(tmp_path, runs=3)
    sweep_file = tmp_path / "sweep.json"
    sweep_file.write_text(json.dumps(config.to_dict()))
    written = []

    def write_record(output_dir: str, spec: RunSpec, record: RunRecord) -> Path:
        if len(written) == 2:  # the disk fills up at the third record
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC),
                          str(store.record_path(output_dir, spec)))
        written.append(spec)
        return real_write(output_dir, spec, record)

    real_write = store.write_record
    monkeypatch.setattr(store, "write_record", write_record)
    monkeypatch.setattr(runner, "train_one", fake_train)
    with pytest.raises(SystemExit) as exit_info:
        runner.main(["--config", str(sweep_file)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    message = err.splitlines()[-1]  # after the progress bar
    assert "Traceback" not in err and message.startswith("error: cannot write ")
    assert "No space left on device (ENOSPC)" in message
    assert "_r002.json" in message
    assert "2 of 3 runs of this shard are finished" in message
    assert "rerun the same command to resume" in message


def test_a_small_filesystem_fills_up_with_a_clear_error(tmp_path: Path) -> None:
    """A real ENOSPC: the output directory on a 200 KiB tmpfs (needs root to mount)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        config = tiny(tmp_path, runs=40, epochs=1, output_dir=str(mount / "out"))
        sweep_file = tmp_path / "sweep.json"
        sweep_file.write_text(json.dumps(config.to_dict()))
        # Fill all but ~60 KiB, so that a few records fit and then the disk is full.
        free = shutil.disk_usage(mount).free
        (mount / "filler").write_bytes(b"\0" * (free - 60_000))
        import lightning_ttn.protocol.runner as module
        original = module.train_one
        module.train_one = fake_train
        try:
            with pytest.raises(SystemExit) as exit_info:
                runner.main(["--config", str(sweep_file)])
        finally:
            module.train_one = original
        assert exit_info.value.code == 1
        finished = [p for p in store.runs_dir(config.output_dir).glob("*.json")]
        assert finished, "some records should have fit"
        for path in finished:  # nothing half-written
            RunRecord.read(path)
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_a_read_only_output_directory_gives_a_clear_error(tmp_path: Path, capsys) -> None:
    config = tiny(tmp_path)
    sweep_file = tmp_path / "sweep.json"
    sweep_file.write_text(json.dumps(config.to_dict()))
    Path(config.output_dir).mkdir()
    os.chmod(config.output_dir, 0o500)
    try:
        with pytest.raises(SystemExit) as exit_info:
            runner.main(["--config", str(sweep_file)])
    finally:
        os.chmod(config.output_dir, 0o700)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "Permission denied (EACCES)" in err and "rerun the same command" in err


# ----------------------------------------------------------------------------- lock files
def test_finished_runs_leave_no_lock_files(tmp_path: Path) -> None:
    config = tiny(tmp_path, runs=3)
    runner.run_sweep(config, train_fn=fake_train, show_progress=False)
    names = sorted(p.name for p in store.runs_dir(config.output_dir).iterdir())
    assert not [n for n in names if n.endswith(".lock")]
    assert len([n for n in names if n.endswith(".json")]) == 3


def test_a_failed_run_keeps_no_record_and_is_retried(tmp_path: Path) -> None:
    config = tiny(tmp_path, runs=1)

    def failing(spec: RunSpec, config: SweepConfig) -> RunRecord:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        runner.run_sweep(config, train_fn=failing, show_progress=False)
    counts = runner.run_sweep(config, train_fn=fake_train, show_progress=False)
    assert counts["trained"] == 1


def test_a_diverged_member_of_a_stack_stops_alone(tmp_path: Path, monkeypatch) -> None:
    """Member 1's weights are poisoned (inf): it diverges in epoch 1 and keeps no later
    history; member 0 trains on exactly as it does alone."""
    import torch

    config = tiny(tmp_path, epochs=3, val_every_n_epochs=1)
    first, second = runner.plan_runs(config)
    alone = runner.train_stack([first], config)[0]
    build = runner.build_run

    def poisoned(spec: RunSpec, config: SweepConfig, args=()):
        module, datamodule, trainer = build(spec, config, args)
        if spec.run == second.run:
            with torch.no_grad():
                next(module.model.parameters()).fill_(math.inf)
        return module, datamodule, trainer

    monkeypatch.setattr(runner, "build_run", poisoned)
    healthy, diverged = runner.train_stack([first, second], config)
    assert diverged.diverged and diverged.diverged_epoch == 1
    assert [e for e, _ in diverged.train_loss_history] == [1]
    assert [e for e, _ in diverged.val_acc_history] == [1]
    assert not healthy.diverged and len(healthy.val_acc_history) == 3
    for key in ("val_acc_history", "best_epoch", "best_val_acc", "test_acc"):
        assert getattr(healthy, key) == getattr(alone, key), key
    strict_json(diverged.to_json())
