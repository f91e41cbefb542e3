"""Tests of the sweep file, the run plan and the resumable, shardable sweep runner."""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from filelock import FileLock, Timeout

from lightning_ttn.models import LeNet5
from lightning_ttn.protocol import runner, store
from lightning_ttn.protocol.paper import WIDTHS, paper_table
from lightning_ttn.protocol.report import write_report
from lightning_ttn.protocol.runner import check_sizes, main, resolve_source, run_sweep, train_one
from lightning_ttn.protocol.schema import (
    RunSpec,
    SweepConfig,
    SweepConfigError,
    candidate_dict,
    load_config,
    parse_config,
    plan_runs,
    shard_runs,
)
from lightning_ttn.training.record import RunRecord, provenance

REPO = Path(__file__).resolve().parents[1]
PRESETS = REPO / "configs" / "sweeps"
METRIC_KEYS = ("val_acc_history", "best_epoch", "best_val_acc", "test_acc", "test_loss",
               "num_parameters", "train_loss_history", "transforms")


def result_path(config: SweepConfig, spec: RunSpec) -> Path:
    return store.record_path(config.output_dir, spec)


def tiny_raw(output_dir: Path, **overrides: Any) -> dict[str, Any]:
    """A valid sweep mapping: 2 sizes x 2 families x 2 runs = 8 runs."""
    raw = {
        "output_dir": str(output_dir),
        "source": "embedded",
        "sizes": [10, 20],
        "runs": 2,
        "epochs": 1,
        "val_videos": 10,
        "test_videos": 10,
        "accelerator": "cpu",
        "families": {
            "3D": [{"name": "w4-14", "channels": [4, 14], "lr": 0.01}],
            "3DTTN": [{"name": "w4-14", "channels": [4, 14], "conv": "ttconv3d", "lr": 0.01}],
        },
    }
    raw.update(overrides)
    return raw


def tiny_config(tmp_path: Path, **overrides: Any) -> SweepConfig:
    return parse_config(tiny_raw(tmp_path / "out", **overrides))


def fake_train(spec: RunSpec, config: SweepConfig) -> RunRecord:
    """Instant stand-in for ``train_one``: metrics derived from the run."""
    acc = 0.5 + 0.01 * spec.run + 0.001 * spec.train_videos
    return RunRecord(
        val_acc_history=[[1, acc]], best_epoch=1, best_val_acc=acc, test_acc=acc - 0.05,
        num_parameters=1, run_id=spec.run_id, family=spec.family, run=spec.run,
        candidate=candidate_dict(spec.candidate), train_videos=spec.train_videos,
        subset_seed=spec.run, recipe=spec.recipe.to_dict(), settings={"source": config.source},
        **provenance(),
    )


def logged_fake_train(spec: RunSpec, config: SweepConfig, log_path: str) -> RunRecord:
    """``fake_train`` that appends the run id to a shared log and takes a little time."""
    with open(log_path, "a") as log:
        log.write(spec.run_id + "\n")
    time.sleep(0.05)
    return fake_train(spec, config)


def fake_train_killed_at(
    spec: RunSpec, config: SweepConfig, victim: str, marker: str
) -> RunRecord:
    """``fake_train`` that, at run ``victim``, leaves a partial temp file and hangs."""
    if spec.run_id == victim:
        path = result_path(config, spec)
        (path.parent / f".{path.name}.partial.tmp").write_text('{"run_id": "trunc')
        Path(marker).write_text("holding the lock")
        time.sleep(600)
    return fake_train(spec, config)


def sweep_worker(config: SweepConfig, train_fn: Any) -> None:
    """Body of a spawned worker process."""
    run_sweep(config, train_fn=train_fn, show_progress=False)


def snapshot(directory: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in directory.glob("*.json")}


# ----------------------------------------------------------------------------- config
def test_every_preset_is_valid_and_docs_count_its_runs() -> None:
    """docs/protocol.md's preset table names every sweep file with the runs it plans."""
    table = (PRESETS.parents[1] / "docs" / "protocol.md").read_text()
    documented = {name: int(runs) for name, runs in
                  re.findall(r"^\| `([\w.]+\.yaml)` \|.*\| (\d+) \|$", table, re.MULTILINE)}
    planned = {path.name: len(plan_runs(load_config(path))) for path in PRESETS.glob("*.yaml")}
    assert documented == planned


def test_paper_preset_pins_the_table2_widths() -> None:
    config = load_config(PRESETS / "paper.yaml")
    specs = plan_runs(config)
    assert len(specs) == 2 * 10 * 30
    assert config.recipe.epochs == 100 and config.recipe.val_every_n_epochs == 1
    assert config.val_videos is None and config.test_videos is None
    paper = paper_table()
    for spec in specs[:20]:  # run 0: one run per family and size
        assert spec.batch_size == (10 if spec.train_videos == 10 else 20)
        assert spec.candidate.channels == WIDTHS[spec.train_videos][spec.family]
        model = LeNet5(spec.candidate.channels, spec.candidate.conv)
        params = sum(p.numel() for p in model.parameters() if p.requires_grad)
        assert params == paper[spec.train_videos][f"{spec.family}_params"], spec.run_id


def test_plan_runs_run_index_outermost(tmp_path: Path) -> None:
    specs = plan_runs(tiny_config(tmp_path, runs=3))
    assert [s.run for s in specs] == sorted(s.run for s in specs)
    assert len(specs) == 12 and len({s.run_id for s in specs}) == 12
    assert all(s.init_seed == s.run for s in specs)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"epoch": 3}, r"unknown key\(s\) \['epoch'\] in top level"),
        ({"families": {"3D": [{"name": "a", "channels": [4, 14], "lr": 0.1, "width": 3}]}},
         r"unknown key\(s\) \['width'\] in families.3D\[0\]"),
        ({"families": {"2D": [{"name": "a", "channels": [4, 14], "lr": 0.1}]}},
         r"unknown key\(s\) \['2D'\] in families; allowed: 3D, 3DTTN, 3DTTN-fixed, 2\+1D"),
        ({"families": {"3D": [{"name": "a", "channels": [4, 14], "lr": 0.1, "conv": "conv2d"}]}},
         r"families.3D\[0\].conv: family 3D uses conv 'conv3d', got 'conv2d'"),
        ({"families": {"3D": [{"name": "a", "channels": [4], "lr": 0.1}]}},
         r"channels must be two integers"),
        ({"families": {"3D": [{"name": "a", "channels": [4, 14], "lr": 0}]}},
         r"families.3D\[0\]: recipe.lr=0 must be > 0"),
        ({"families": {"3D": [{"name": "a", "channels": [4, 14], "lr_schedule": "cosine"}]}},
         r"recipe.lr_schedule='cosine' is not one of \('plateau', 'halve_every_10', "),
        ({"families": {"3D": [{"name": "a", "channels": [4, 14], "lr": 0.1, "sizes": [10]}]}},
         r"families.3D: no candidate applies to size 20"),
        ({"families": {"3D": [{"name": "a", "channels": [4, 14], "lr": 0.1}] * 2}},
         r"candidate names must be unique"),
        ({"sizes": [10, 15]}, r"sizes\[1\]: training-set size must be a positive multiple of 10"),
        ({"sizes": [0]}, r"positive multiple of 10 \(class-balanced\), got 0"),
        ({"sizes": [10, 10]}, r"sizes lists a size twice"),
        ({"val_videos": 15}, r"val_videos must be null .* positive multiple of 10"),
        ({"runs": 0}, r"runs must be an integer >= 1, got 0"),
        ({"epochs": 2, "val_every_n_epochs": 3},
         r"recipe.epochs \(2\) must be a multiple of recipe.val_every"),
        ({"epochs": 7, "val_every_n_epochs": 2}, r"epochs \(7\) must be a multiple of"),
        ({"devices": 2}, r"devices must be 1 .* got 2; .* --shard k/n"),
        ({"families": {"3D": [{"name": "a", "channels": [4, 14], "lr": 0.1,
                               "sizes": [10, 20, 30]}]}},
         r"candidate 'a' lists sizes \[30\] that are not in the sweep's sizes \[10, 20\]"),
        ({"source": "imagenet"}, r"source must be one of auto, embedded, mnist, download"),
        ({"deterministic": "yes"}, r"deterministic must be true, false or warn"),
        ({"batch_size_overrides": {"x": 5}}, r"batch_size_overrides key 'x'.* integer >= 1"),
        ({"first_run": -1}, r"first_run must be an integer >= 0, got -1"),
    ],
)
def test_bad_sweep_file_is_rejected(tmp_path: Path, overrides: dict, match: str) -> None:
    with pytest.raises(SweepConfigError, match=match):
        tiny_config(tmp_path, **overrides)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"sizes": [10, 4010]}, r"size 4010: source 'embedded' has 4000 training videos"),
        ({"sizes": [10, 60000], "source": "mnist"}, r"source 'mnist' has 50000 training"),
        ({"val_videos": 600}, r"val_videos=600 exceeds the 500 clips .* source 'embedded'"),
        ({"test_videos": 20000, "source": "mnist"}, r"test_videos=20000 exceeds the 10000"),
    ],
)
def test_sizes_beyond_the_digit_source_are_rejected(
    tmp_path: Path, overrides: dict, match: str
) -> None:
    config = tiny_config(tmp_path, **overrides)
    with pytest.raises(SweepConfigError, match=match):
        check_sizes(config)
    with pytest.raises(SweepConfigError, match=match):
        run_sweep(config, train_fn=fake_train, show_progress=False)
    assert not Path(config.output_dir).exists()  # fails before writing anything


def test_bad_sweep_file_fails_before_any_training(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(f"output_dir: {tmp_path / 'out'}\nsizes: [10, 25]\nfamilies: {{}}\n")
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(path)])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "sizes[1]: training-set size must be a positive multiple of 10" in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text", ["1", "2/2", "-1/2", "a/b", "0/0"])
def test_bad_shard_is_rejected(tmp_path: Path, text: str) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text(json.dumps(tiny_raw(tmp_path / "out")))
    with pytest.raises(SystemExit):
        main(["--config", str(path), "--shard", text, "--dry-run"])


# ----------------------------------------------------------------------------- the runner
def test_resume_skips_finished_runs(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    calls: list[str] = []

    def counting_train(spec: RunSpec, cfg: SweepConfig) -> RunRecord:
        calls.append(spec.run_id)
        return fake_train(spec, cfg)

    first = run_sweep(config, train_fn=counting_train, show_progress=False)
    assert first == {"total": 8, "finished_before": 0, "trained": 8, "held": 0}
    record = RunRecord.read(result_path(config, plan_runs(config)[0]))
    assert record.subset_seed == record.run == 0 and record.recipe["epochs"] == 1
    assert set(record.versions) == {"python", "torch", "pytorch_lightning", "lightning_ttn"}
    second = run_sweep(config, train_fn=counting_train, show_progress=False)
    assert second == {"total": 8, "finished_before": 8, "trained": 0, "held": 0}
    assert len(calls) == 8
    assert (Path(config.output_dir) / "sweep.yaml").exists()


def test_resume_rejects_changed_settings_but_allows_more_runs(tmp_path: Path) -> None:
    run_sweep(tiny_config(tmp_path), train_fn=fake_train, show_progress=False)
    with pytest.raises(SweepConfigError, match="with different epochs"):
        run_sweep(tiny_config(tmp_path, epochs=2), train_fn=fake_train, show_progress=False)
    counts = run_sweep(tiny_config(tmp_path, runs=3), train_fn=fake_train, show_progress=False)
    assert counts["trained"] == 4 and counts["finished_before"] == 8


def test_a_grid_may_grow_on_resume_but_not_change(tmp_path: Path) -> None:
    run_sweep(tiny_config(tmp_path), train_fn=fake_train, show_progress=False)
    raw = tiny_raw(tmp_path / "out")
    raw["families"]["3D"].append({"name": "lr0.1", "channels": [4, 14], "lr": 0.1})
    counts = run_sweep(parse_config(raw), train_fn=fake_train, show_progress=False)
    assert counts["trained"] == 4 and counts["finished_before"] == 8
    raw["families"]["3D"][0]["lr"] = 0.02
    with pytest.raises(SweepConfigError, match="with different families"):
        run_sweep(parse_config(raw), train_fn=fake_train, show_progress=False)


def test_a_run_held_by_another_worker_is_skipped(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    first = plan_runs(config)[0]
    result_path(config, first).parent.mkdir(parents=True)
    with FileLock(str(result_path(config, first).with_suffix(".lock"))):
        counts = run_sweep(config, train_fn=fake_train, show_progress=False)
    assert counts["held"] == 1 and counts["trained"] == 7
    assert not result_path(config, first).exists()


def test_shards_partition_the_runs(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, runs=3)
    all_ids = [s.run_id for s in plan_runs(config)]
    shards = [[s.run_id for s in shard_runs(plan_runs(config), k, 5)] for k in range(5)]
    assert sorted(sum(shards, [])) == sorted(all_ids)
    assert len(set(sum(shards, []))) == len(all_ids)
    for k in range(3):
        run_sweep(config, shard=(k, 3), train_fn=fake_train, show_progress=False)
    assert len(list((Path(config.output_dir) / "runs").glob("*.json"))) == len(all_ids)


def test_killed_worker_run_is_redone_and_finished_runs_are_untouched(tmp_path: Path) -> None:
    config = tiny_config(tmp_path)
    specs = plan_runs(config)
    victim = specs[3]
    marker = tmp_path / "marker"
    train_fn = functools.partial(
        fake_train_killed_at, victim=victim.run_id, marker=str(marker)
    )
    worker = multiprocessing.get_context("spawn").Process(
        target=sweep_worker, args=(config, train_fn)
    )
    worker.start()
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert worker.is_alive() and time.monotonic() < deadline, "worker never reached run 3"
        time.sleep(0.1)
    lock = FileLock(str(result_path(config, victim).with_suffix(".lock")), timeout=0)
    with pytest.raises(Timeout):
        lock.acquire()  # the worker holds the run
    os.kill(worker.pid, signal.SIGKILL)
    worker.join()
    runs = Path(config.output_dir) / "runs"
    before = snapshot(runs)
    assert sorted(before) == sorted(f"{s.run_id}.json" for s in specs[:3])

    counts = run_sweep(config, train_fn=fake_train, show_progress=False)

    assert counts == {"total": 8, "finished_before": 3, "trained": 5, "held": 0}
    after = snapshot(runs)
    assert {name: after[name] for name in before} == before
    assert json.loads(result_path(config, victim).read_text())["run_id"] == victim.run_id
    assert not list(runs.glob(".*.tmp"))


def test_concurrent_workers_train_each_run_once(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, runs=3)
    log_path = tmp_path / "trained.log"
    train_fn = functools.partial(logged_fake_train, log_path=str(log_path))
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=sweep_worker, args=(config, train_fn)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=180)
        assert worker.exitcode == 0
    trained = log_path.read_text().split()
    expected = sorted(s.run_id for s in plan_runs(config))
    assert sorted(trained) == expected
    assert sorted(p.stem for p in (Path(config.output_dir) / "runs").glob("*.json")) == expected


# ----------------------------------------------------------------------------- train_one
def real_config(tmp_path: Path, **overrides: Any) -> SweepConfig:
    """A tiny sweep on the embedded digits, cached in the repository's data directory."""
    return tiny_config(tmp_path, data_dir=str(REPO / "data"), **overrides)


def test_train_one_is_deterministic_and_tests_the_best_weights(tmp_path: Path) -> None:
    config = real_config(tmp_path, sizes=[10], runs=1, epochs=3)
    spec = next(s for s in plan_runs(config) if s.family == "3DTTN")
    first = train_one(spec, config)
    second = train_one(spec, config)
    assert {k: getattr(first, k) for k in METRIC_KEYS} == {
        k: getattr(second, k) for k in METRIC_KEYS}
    assert [epoch for epoch, _ in first.val_acc_history] == [1, 2, 3]
    assert first.best_val_acc == max(acc for _, acc in first.val_acc_history)
    assert first.tested_epoch == first.best_epoch
    assert first.num_parameters == 222940 and first.batch_size == 10
    assert [layer.layer for layer in first.transforms] == ["features.0", "features.3"]
    assert first.replay == ["train.py", "fit", "--config",
                            str(store.replay_config_path(config.output_dir, spec))]
    assert not list(tmp_path.glob("lightning_logs")) and not Path("checkpoints").exists()


def test_a_sweep_run_replays_exactly_from_its_record(tmp_path: Path) -> None:
    """The record's replay command retrains the run: the same test accuracy on CPU."""
    config = real_config(tmp_path, sizes=[20], runs=1, epochs=4, val_every_n_epochs=2)
    run_sweep(config, show_progress=False)
    spec = next(s for s in plan_runs(config) if s.family == "3DTTN")
    record = RunRecord.read(result_path(config, spec))
    env = {**os.environ, "OMP_NUM_THREADS": str(record.torch_threads)}
    replay = subprocess.run(
        [sys.executable, str(REPO / record.replay[0]), *record.replay[1:]],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )
    assert replay.returncode == 0, replay.stderr
    printed = re.search(r"^\s*test/acc\s+([0-9.]+)\s*$", replay.stdout, re.MULTILINE)
    assert printed and float(printed.group(1)) == pytest.approx(record.test_acc, abs=1e-7)
    replayed = RunRecord.read(
        tmp_path / "lightning_logs" / "replay" / spec.run_id / "version_0" / "run.json")
    assert replayed.test_acc == record.test_acc
    assert replayed.val_acc_history == record.val_acc_history


@pytest.mark.slow
def test_smoke_preset_end_to_end(tmp_path: Path) -> None:
    raw = load_config(PRESETS / "smoke.yaml").to_dict()
    raw.update(output_dir=str(tmp_path / "smoke"), data_dir=str(REPO / "data"))
    config = parse_config(raw)
    first = run_sweep(config, shard=(0, 2), show_progress=False)
    second = run_sweep(config, shard=(1, 2), show_progress=False)
    assert first["trained"] + second["trained"] == 8
    assert run_sweep(config, show_progress=False)["trained"] == 0
    write_report(config.output_dir)
    for name in ("table.md", "table.csv", "figure.png"):
        assert (Path(config.output_dir) / name).stat().st_size > 0
    record = RunRecord.read(result_path(config, plan_runs(config)[0]))
    assert record.data_source == "embedded" and 0 <= record.test_acc <= 1


def test_auto_source_is_resolved_once_and_sizes_checked_against_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        runner, "load_digits", lambda *args, **kwargs: SimpleNamespace(name="embedded")
    )
    config = tiny_config(tmp_path, source="auto")
    assert resolve_source(config).source == "embedded"
    too_big = tiny_config(tmp_path, source="auto", sizes=[10, 5000])  # fits full MNIST only
    with pytest.raises(SweepConfigError, match="source 'embedded' has 4000 training videos"):
        check_sizes(resolve_source(too_big))


def test_a_binary_sweep_file_gets_a_clear_error(tmp_path: Path, capsys) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(path)])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert f"{path}: cannot read the sweep file" in message and "Traceback" not in message
    assert not list(tmp_path.glob("**/sweep.json")) and not list(tmp_path.glob("**/*.lock"))
