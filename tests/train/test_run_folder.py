"""A training run that cannot be lost, mixed up or silently restarted (issue 20): one run per folder, verified
checkpoints, a resume that tells the truth, logs without repeats, exact NaN stops, and recipes checked up front."""

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from tiny_runs import DEMO, PRETRAIN, REPO, assert_same_weights, final_weights, tiny_overrides, write_tiny_data

import videofirst.train.pretraining as pretraining
from videofirst.recipe import load_recipe, parse_recipe_args
from videofirst.train.checkpointing import MANIFEST_FILE, STATE_FILE, CheckpointError, CheckpointManager, TrainerState
from videofirst.train.loop import NonFiniteLossError, TrainingRun, check_finite
from videofirst.train.run_folder import RunFolderError
from videofirst.train.setup import prepare_data


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return write_tiny_data(tmp_path_factory.mktemp("data"))


def tiny_recipe(data: Path, run_dir: Path, *overrides: str):
    return load_recipe(DEMO, tiny_overrides(data, run_dir) + list(overrides))


def logged_steps(run_dir: Path) -> list[int]:
    """The step of each training record (not evaluations) in the run's metrics log."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [record["step"] for record in records if "loss" in record]


def checkpoint_names(run_dir: Path) -> list[str]:
    return sorted(path.name for path in (run_dir / "checkpoints").iterdir())


def folder_with_checkpoints(data: Path, run_dir: Path, steps=(2, 4), *overrides: str) -> None:
    """A run folder as a run leaves it (run.json, verified checkpoints), without training: a linear layer's state."""
    run = TrainingRun(tiny_recipe(data, run_dir, *overrides))
    run.accelerator.prepare(torch.nn.Linear(3, 3))
    for step in steps:
        run.checkpoints.save(TrainerState(step=step, samples_seen=4 * step))
    run.close()


# 1. A run folder belongs to one run ------------------------------------------------------------------------------


def test_a_new_run_refuses_a_folder_holding_another_run(tiny_data, tmp_path):
    run_dir = tmp_path / "run"
    pretraining.pretrain(tiny_recipe(tiny_data, run_dir, "optim.max_steps=4"))
    checkpoints, log = checkpoint_names(run_dir), (run_dir / "metrics.jsonl").read_text()
    assert checkpoints == ["step_00000002", "step_00000004"]

    with pytest.raises(RunFolderError, match=r"already holds a run \(checkpoints step_00000002.*--resume.*--overwrite"):
        pretraining.pretrain(tiny_recipe(tiny_data, run_dir, "optim.max_steps=2", "run.seed=1"))
    assert checkpoint_names(run_dir) == checkpoints and (run_dir / "metrics.jsonl").read_text() == log

    # --overwrite starts afresh: only the new run's checkpoints and log remain.
    pretraining.pretrain(
        tiny_recipe(tiny_data, run_dir, "optim.max_steps=2", "run.seed=1", "checkpoint.overwrite=true")
    )
    assert checkpoint_names(run_dir) == ["step_00000002"]
    assert logged_steps(run_dir) == [1, 2]
    assert json.loads((run_dir / "run.json").read_text())["recipe"]["run"]["seed"] == 1


def test_one_live_run_per_folder_and_stale_locks_are_replaced(tiny_data, tmp_path, caplog):
    recipe = tiny_recipe(tiny_data, tmp_path / "run")
    lock = tmp_path / "run" / "run.lock"
    lock.parent.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        lock.write_text(json.dumps({"pid": other.pid, "host": socket.gethostname()}))
        with pytest.raises(RunFolderError, match=f"in use by process {other.pid}"):
            TrainingRun(recipe)
    finally:
        other.kill()
        other.wait()
    assert json.loads(lock.read_text())["pid"] == other.pid  # the live run's lock was left alone

    with caplog.at_level(logging.WARNING):
        run = TrainingRun(recipe)  # that process is gone now
    assert f"stale lock {lock} of process {other.pid}" in caplog.text
    assert json.loads(lock.read_text())["pid"] == os.getpid()
    run.close()
    assert not lock.exists()


# 6. Resuming under a different setup --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("optim.batch_size=8", r"`optim.batch_size`: 4 -> 8"),
        ("model.vision.hidden_size=32", r"`model.vision.hidden_size`: 64 -> 32"),
        ("data.num_frames=6", r"`data.num_frames`: 4 -> 6"),
        ("optim.learning_rate=0.5", r"`optim.learning_rate`"),
    ],
)
def test_resume_refuses_a_changed_run_and_says_what_changed(tiny_data, tmp_path, change, message):
    folder_with_checkpoints(tiny_data, tmp_path / "run")
    recorded = (tmp_path / "run" / "run.json").read_text()
    with pytest.raises(RunFolderError, match=message):
        TrainingRun(tiny_recipe(tiny_data, tmp_path / "run", "checkpoint.resume=true", change))
    assert (tmp_path / "run" / "run.json").read_text() == recorded


def test_resume_refuses_another_process_count(tiny_data, tmp_path):
    folder_with_checkpoints(tiny_data, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["num_processes"] == 1 and record["global_batch"] == 4
    (tmp_path / "run" / "run.json").write_text(json.dumps({**record, "num_processes": 2, "global_batch": 8}))
    with pytest.raises(RunFolderError, match=r"processes: 2 -> 1 \(global batch 8 -> 4"):
        TrainingRun(tiny_recipe(tiny_data, tmp_path / "run", "checkpoint.resume=true"))


def test_a_recipe_key_added_since_the_run_started_is_not_a_change_at_its_default(tiny_data, tmp_path):
    folder_with_checkpoints(tiny_data, tmp_path / "run")
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    del record["recipe"]["data"]["keyframe_snap"]  # as if the run predates the field
    (tmp_path / "run" / "run.json").write_text(json.dumps(record))
    TrainingRun(tiny_recipe(tiny_data, tmp_path / "run", "checkpoint.resume=true")).close()
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    del record["recipe"]["data"]["keyframe_snap"]
    (tmp_path / "run" / "run.json").write_text(json.dumps(record))
    with pytest.raises(RunFolderError, match=r"`data.keyframe_snap`: '\(unset\)' -> 2.0"):
        TrainingRun(tiny_recipe(tiny_data, tmp_path / "run", "checkpoint.resume=true", "data.keyframe_snap=2.0"))


def test_resume_honours_a_longer_run_and_logs_it(tiny_data, tmp_path, caplog):
    folder_with_checkpoints(tiny_data, tmp_path / "run")
    with caplog.at_level(logging.WARNING):
        run = TrainingRun(tiny_recipe(tiny_data, tmp_path / "run", "checkpoint.resume=true", "optim.max_steps=10"))
    run.close()
    assert run.checkpoint_to_resume().name == "step_00000004"
    assert "`optim.max_steps`: 6 -> 10" in caplog.text
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["recipe"]["optim"]["max_steps"] == 10 and record["resumed"][0]["step"] == 4
    # A checkpoint past the new end is not silently exported as the result.
    with pytest.raises(RunFolderError, match=r"at step 4, past `optim.max_steps` = 3"):
        TrainingRun(tiny_recipe(tiny_data, tmp_path / "run", "checkpoint.resume=true", "optim.max_steps=3"))


# 2, 3. Resume that tells the truth ----------------------------------------------------------------------------------


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated weights": ("model.safetensors", lambda path: path.write_bytes(path.read_bytes()[:100])),
    "zeroed weights": ("model.safetensors", lambda path: path.write_bytes(bytes(path.stat().st_size))),
    "deleted weights": ("model.safetensors", Path.unlink),
    "flipped weight byte": ("model.safetensors", _flip_last_byte),
    "garbage optimizer": ("optimizer.bin", lambda path: path.write_bytes(b"garbage")),
    "truncated state": (STATE_FILE, lambda path: path.write_text('{"step": 4')),
    "empty state": (STATE_FILE, lambda path: path.write_text("{}")),
    "deleted state": (STATE_FILE, Path.unlink),
    "deleted manifest": (MANIFEST_FILE, Path.unlink),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_checkpoint_is_set_aside_and_the_previous_one_loads(tmp_path, damage):
    accelerator = Accelerator(cpu=True)
    model, _ = accelerator.prepare(torch.nn.Linear(3, 3), torch.optim.SGD([torch.nn.Parameter(torch.ones(1))], 0.1))
    manager = CheckpointManager(tmp_path, accelerator)
    manager.save(TrainerState(step=2))
    saved = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    latest = manager.save(TrainerState(step=4))
    name, spoil = DAMAGE[damage]
    spoil(latest / name)

    checkpoint, rejected = manager.find_resumable()
    assert checkpoint.name == "step_00000002"
    assert [path for path, _ in rejected] == [latest] and name in rejected[0][1]
    assert manager.load(checkpoint).step == 2 and torch.equal(model.weight, saved)


def test_resume_falls_back_with_a_warning_and_refuses_when_nothing_is_valid(tiny_data, tmp_path, caplog):
    run_dir = tmp_path / "run"
    folder_with_checkpoints(tiny_data, run_dir)
    _flip_last_byte(run_dir / "checkpoints" / "step_00000004" / "model.safetensors")
    with caplog.at_level(logging.WARNING):
        run = TrainingRun(tiny_recipe(tiny_data, run_dir, "checkpoint.resume=true"))
    run.close()
    assert run.checkpoint_to_resume().name == "step_00000002"
    assert "Not resuming from step_00000004" in caplog.text and "does not match the checksum" in caplog.text
    assert checkpoint_names(run_dir) == ["step_00000002", "step_00000004.invalid"]

    (run_dir / "checkpoints" / "step_00000002" / STATE_FILE).write_text("{}")
    with pytest.raises(
        CheckpointError, match=r"(?s)No checkpoint in .* can be resumed from.*step_00000002/trainer_state.json"
    ):
        TrainingRun(tiny_recipe(tiny_data, run_dir, "checkpoint.resume=true"))
    assert checkpoint_names(run_dir) == ["step_00000002", "step_00000004.invalid"]  # nothing restarted over it


def test_resume_with_nothing_to_resume_says_so(tiny_data, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        run = TrainingRun(tiny_recipe(tiny_data, tmp_path / "empty", "checkpoint.resume=true"))
    run.close()
    assert run.checkpoint_to_resume() is None
    assert f"Nothing to resume in {tmp_path / 'empty'} (no checkpoint): starting a fresh run." in caplog.text
    # A folder with an earlier run's log but no checkpoint is not restarted over.
    (tmp_path / "empty" / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    with pytest.raises(RunFolderError, match="Nothing to resume .* no checkpoint was saved.*metrics.jsonl"):
        TrainingRun(tiny_recipe(tiny_data, tmp_path / "empty", "checkpoint.resume=true"))


# 4. Logs without repeats ----------------------------------------------------------------------------------------------


class Interrupted(RuntimeError):
    pass


def test_metrics_log_has_each_step_once_after_a_resume(tiny_data, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    eval_due = TrainingRun.eval_due

    def crash_after_step_5(self, at_end=False):
        if self.state.step == 5:
            raise Interrupted
        return eval_due(self, at_end)

    monkeypatch.setattr(TrainingRun, "eval_due", crash_after_step_5)
    with pytest.raises(Interrupted):
        pretraining.pretrain(tiny_recipe(tiny_data, run_dir, "eval.every=2"))
    assert logged_steps(run_dir) == [1, 2, 3, 4, 5]  # the last checkpoint is step 4
    monkeypatch.undo()

    pretraining.pretrain(tiny_recipe(tiny_data, run_dir, "eval.every=2", "checkpoint.resume=true"))
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged_steps(run_dir) == [1, 2, 3, 4, 5, 6]
    assert [record["step"] for record in records if "eval/t2v_recall@1" in record] == [2, 4, 6]


# 7. NaN stop with gradient accumulation ------------------------------------------------------------------------------


def test_nan_on_a_later_micro_batch_saves_the_last_applied_step_and_resumes_exactly(tiny_data, tmp_path, monkeypatch):
    accumulate = ("optim.gradient_accumulation_steps=2", "optim.max_steps=4")
    pretraining.pretrain(tiny_recipe(tiny_data, tmp_path / "reference", *accumulate))

    calls = {"count": 0}
    real_loss = pretraining.gathered_contrastive_loss

    def poisoned(*args, **kwargs):
        calls["count"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["count"] == 6 else loss  # the 2nd micro-batch of step 3

    monkeypatch.setattr(pretraining, "gathered_contrastive_loss", poisoned)
    run_dir = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match="step 2"):
        pretraining.pretrain(tiny_recipe(tiny_data, run_dir, *accumulate, "checkpoint.save_every=100"))
    monkeypatch.undo()
    state = json.loads((run_dir / "checkpoints" / "step_00000002" / STATE_FILE).read_text())
    assert state["batches_in_epoch"] == 4 and state["samples_seen"] == 16  # 2 steps of 2 micro-batches of 4

    pretraining.pretrain(
        tiny_recipe(tiny_data, run_dir, *accumulate, "checkpoint.save_every=100", "checkpoint.resume=true")
    )
    assert_same_weights(final_weights(tmp_path / "reference"), final_weights(run_dir))


def test_the_non_finite_message_names_the_process_that_saw_it():
    class TwoProcesses:
        process_index = 0

        def gather(self, tensor):
            return torch.cat([tensor, torch.zeros_like(tensor)])  # process 1's loss was not finite

    with pytest.raises(NonFiniteLossError, match=r"on process\(es\) \[1\] \(this process, 0, had 2\.75\)"):
        check_finite(torch.tensor(2.75), TwoProcesses())


# 8. Recipes checked before anything starts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("model.vision.hidden_sise=32", "hidden_sise"),
        ("model.text.num_hiden_layers=1", "num_hiden_layers"),
        ("model.vision.attention_type=diagonal", "model.vision"),
        ("checkpoint.save_every=0", "checkpoint.save_every"),
        ("run.log_every=0", "run.log_every"),
        ("optim.gradient_accumulation_steps=0", "optim.gradient_accumulation_steps"),
        ("optim.contrastive_micro_batches=0", "optim.contrastive_micro_batches"),
        ("data.decode_backend=bogus", "data.decode_backend"),
        ("eval.every=-1", "eval.every"),
        ("data.max_bad_fraction=-0.1", "data.max_bad_fraction"),
        ("optim.weight_decay=-0.05", "optim.weight_decay"),
        ("optim.learning_rate=-0.001", "optim.learning_rate"),
        ("optim.beta1=1.5", "optim.beta1"),
        ("run.seed=-1", "run.seed"),
        ("optim.mixed_precision=fp12", "optim.mixed_precision"),
    ],
)
def test_recipe_values_that_make_no_sense_are_refused_naming_the_key(override, key):
    with pytest.raises(ValueError, match=f"`?{key}"):
        load_recipe(DEMO, [override])


def test_recipe_accepts_yaml_exponent_floats(tmp_path):
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(f"base: {DEMO}\noptim:\n  learning_rate: 1e-3\n")
    assert load_recipe(recipe_file).optim.learning_rate == 0.001
    assert load_recipe(DEMO, ["optim.eps=1e-8"]).optim.eps == 1e-8


def test_a_mistyped_manifest_is_an_error_not_a_synthetic_dataset(tmp_path):
    typo = tmp_path / "my_clips" / "trian.jsonl"
    recipe = load_recipe(DEMO, [f"data.train_manifest={typo}", f"data.synthetic.folder={tmp_path / 'synthetic'}"])
    with pytest.raises(FileNotFoundError, match=r"`data.train_manifest` .*trian.jsonl does not exist"):
        prepare_data(recipe, tmp_path / "run")
    assert not typo.parent.exists() and not (tmp_path / "synthetic").exists()


def test_the_recipe_writes_shape_distractors_into_the_synthetic_data(tmp_path):
    folder = tmp_path / "synthetic"
    overrides = [f"data.synthetic.folder={folder}", f"data.train_manifest={folder / 'train.jsonl'}"]
    overrides += ["data.synthetic.num_videos=12", "data.synthetic.shape_variants_per_set=3"]
    prepare_data(load_recipe(DEMO, overrides), tmp_path / "run")
    assert json.loads((folder / "synthetic.json").read_text())["shape_variants_per_set"] == 3
    rows = [json.loads(line) for line in (folder / "manifest.jsonl").read_text().splitlines()]
    first, *_, last = [row for row in rows if row["group"] == 0]
    assert [e["colour"] for e in last["events"]] == [e["colour"] for e in first["events"]]
    assert [e["shape"] for e in last["events"]] != [e["shape"] for e in first["events"]]


# 11. Disk full, atomic export, command line ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "error",
    [OSError(errno.ENOSPC, "No space left on device"), RuntimeError("basic_ios::clear: iostream error")],
    ids=["ENOSPC", "torch"],
)
def test_a_full_disk_names_the_checkpoint_and_keeps_the_previous_one(tmp_path, monkeypatch, error):
    accelerator = Accelerator(cpu=True)
    accelerator.prepare(torch.nn.Linear(3, 3))
    manager = CheckpointManager(tmp_path, accelerator)
    previous = manager.save(TrainerState(step=1))

    def full_disk(folder, **kwargs):
        Path(folder, "model.safetensors").write_bytes(b"half")
        raise error

    monkeypatch.setattr(accelerator, "save_state", full_disk)
    with pytest.raises(CheckpointError, match=r"No space left on the device while writing .*step_00000002.partial"):
        manager.save(TrainerState(step=2))
    assert manager.find_resumable() == (previous, []) and not list(tmp_path.glob("*.partial"))


def test_the_export_appears_only_when_complete(tiny_data, tmp_path):
    run = TrainingRun(tiny_recipe(tiny_data, tmp_path / "run"))

    def half_export(folder: Path):
        folder.mkdir()
        (folder / "config.json").write_text("{}")
        raise Interrupted

    with pytest.raises(Interrupted):
        run.finish(half_export)
    assert not (tmp_path / "run" / "export").exists()

    def export(folder: Path):
        folder.mkdir()
        (folder / "model.safetensors").write_text("weights")

    assert run.finish(export) == tmp_path / "run" / "export"
    assert sorted(path.name for path in (tmp_path / "run" / "export").iterdir()) == ["model.safetensors"]
    assert not (tmp_path / "run" / "export.partial").exists()


def test_command_line_flags_and_overrides_in_any_order():
    config, overrides = parse_recipe_args(["a.b=1", "--resume", "c.d=2"], description=None, default_config=DEMO)
    assert config == DEMO and overrides == ["a.b=1", "c.d=2", "checkpoint.resume=true"]
    _, overrides = parse_recipe_args(["--overwrite", "a.b=1"], description=None, default_config=DEMO)
    assert overrides == ["a.b=1", "checkpoint.overwrite=true"]
    with pytest.raises(ValueError, match="exclude each other"):
        load_recipe(DEMO, ["checkpoint.resume=true", "checkpoint.overwrite=true"])


# 5, 11. The README's two-process CPU launch, and workers that end with their launcher ---------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(child) for child in (task / "children").read_text().split()]
    return found


def _running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal and /proc are Linux's")
def test_cpu_2proc_config_runs_two_processes_that_end_with_the_launcher(tiny_data, tmp_path):
    run_dir = tmp_path / "ddp"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "training" / "accelerate_configs" / "cpu_2proc.yaml"),
        "--main_process_port",
        "0",
        str(PRETRAIN),
        "--config",
        str(DEMO),
        # Every checkpoint is kept: with the default two, step 2's is rotated away at step 6, a fraction of a second
        # later on a fast machine, and the poll below could miss it while the run goes on to its end.
        *tiny_overrides(
            tiny_data, run_dir, **{"optim.max_steps": 1000, "optim.batch_size": 2, "checkpoint.keep_last": 1000}
        ),
    ]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    launcher = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    workers: list[int] = []
    try:
        state_file = run_dir / "checkpoints" / "step_00000002" / STATE_FILE
        deadline = time.monotonic() + 240
        while not state_file.exists() and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert state_file.exists(), "the two-process run never reached its step-2 checkpoint"
        # Two processes of batch 2: a global batch of 4 clips per step.
        assert json.loads(state_file.read_text())["samples_seen"] == 8
        assert json.loads((run_dir / "run.json").read_text())["num_processes"] == 2
        workers = _children(launcher.pid)
        assert len(workers) == 2
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        deadline = time.monotonic() + 30
        while any(_running(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in workers if _running(pid)], "workers kept training after their launcher was killed"
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
        for pid in workers:  # only if the test failed: the workers this test's launcher started
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
