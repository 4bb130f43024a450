"""Bad samples and bad captions: dropped and counted once (never replaced by a neighbour), batches of one size on
every process, the bad-fraction check, and captions refused at load with the file and row named."""

import json
import os
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from transformers import BertTokenizerFast
from video_fixtures import write_video
from videofirst.modeling.processing_videofirst import VideoFirstProcessor
from videofirst.modeling.video_processing_videofirst import VideoFirstVideoProcessor

import videofirst.data.loading as data_module
from videofirst.data.loading import build_dataloader
from videofirst.data.sources import load_source, source_captions
from videofirst.recipe import DataSection, PretrainRecipe
from videofirst.train.checkpointing import TrainerState
from videofirst.train.loop import check_bad_fraction

ROWS = 12
DATA = DataSection(num_frames=2, fps=2.0, num_workers=0)


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    """12 one-second clips captioned ``clip 0`` .. ``clip 11``, plus a corrupt file."""
    root = tmp_path_factory.mktemp("clips")
    for index in range(ROWS):
        write_video(root / f"clip{index}.mp4", 10, fps=10, height=16, width=32)
    (root / "corrupt.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"junk" * 64)
    return root


def manifest(clips: Path, bad: set[int], name: str) -> str:
    """Rows 0..11 in order; the rows in `bad` point at the corrupt file (even ones) or a missing file (odd)."""
    rows = []
    for index in range(ROWS):
        video = f"clip{index}.mp4" if index not in bad else ("corrupt.mp4" if index % 2 == 0 else "missing.mp4")
        rows.append({"video": video, "caption": f"clip {index}"})
    path = clips / name
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


@pytest.fixture(scope="module")
def processor(tmp_path_factory) -> VideoFirstProcessor:
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "clip", *map(str, range(12))]))
    video_processor = VideoFirstVideoProcessor(
        size={"height": 16, "width": 32}, do_center_crop=False, do_normalize=False, do_rescale=False
    )
    return VideoFirstProcessor(video_processor=video_processor, tokenizer=BertTokenizerFast(vocab_file=str(vocab)))


def read_epoch(loader) -> tuple[list[str], int, list[int]]:
    """Captions of one epoch in order, bad samples counted, and the batch sizes."""
    captions, skipped, sizes = [], 0, []
    for batch in loader:
        captions += batch["captions"]
        skipped += int(batch["skipped"].sum())
        sizes.append(len(batch["captions"]))
        if batch["captions"]:
            assert batch["pixel_values_videos"].shape[0] == batch["input_ids"].shape[0] == len(batch["captions"])
    return captions, skipped, sizes


# One process -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [{3, 4, 5, 6}, {0, 11}, {2, 3, 4, 7, 8}])
def test_each_good_row_once_and_each_bad_row_counted_once(clips, processor, bad):
    """Brute force: an epoch is the good rows, each exactly once, and the count is the number of bad rows (the
    old skipping returned the next row instead, so it appeared k + 1 times and k adjacent bad rows counted
    k (k + 1) / 2 times)."""
    source = manifest(clips, bad, f"bad_{'_'.join(map(str, sorted(bad)))}.jsonl")
    good = [f"clip {i}" for i in range(ROWS) if i not in bad]

    evaluation = build_dataloader(DATA, source, processor, batch_size=4, shuffle=False)
    captions, skipped, sizes = read_epoch(evaluation)
    assert captions == good and skipped == len(bad)  # in order, nothing repeated: retrieval pairs stay right
    assert sizes == [4 - len(bad & set(range(start, start + 4))) for start in range(0, ROWS, 4)]

    training = build_dataloader(DATA, source, processor, batch_size=4, shuffle=True, seed=0)
    total = 0
    for _ in range(2):  # 12 rows, batch 4: every row is in every epoch
        captions, skipped, _ = read_epoch(training)
        assert sorted(captions) == sorted(good) and len(set(captions)) == len(captions)
        total += skipped
    assert total == 2 * len(bad)


def test_any_decoding_failure_in_a_worker_is_a_counted_bad_sample(clips, processor, monkeypatch):
    """RuntimeError / MemoryError (a failed allocation) in a DataLoader worker skip the sample, not the run."""
    real = data_module.load_media

    def failing(row, video_processor, data):
        if row["media"].endswith("clip3.mp4"):
            raise RuntimeError("could not allocate 4.9 GB")
        if row["media"].endswith("clip7.mp4"):
            raise MemoryError()
        return real(row, video_processor, data)

    monkeypatch.setattr(data_module, "load_media", failing)  # forked workers inherit the patch
    data = DataSection(**{**DATA.__dict__, "num_workers": 2})
    loader = build_dataloader(data, manifest(clips, set(), "all_good.jsonl"), processor, batch_size=4, shuffle=False)
    captions, skipped, _ = read_epoch(loader)
    assert skipped == 2 and captions == [f"clip {i}" for i in range(ROWS) if i not in (3, 7)]


def test_bad_fraction_check_waits_for_enough_samples():
    state = TrainerState(samples_seen=8, bad_samples=1)  # one bad clip in the first batch: 11%
    check_bad_fraction(state, 0.05, min_samples=100)
    with pytest.raises(RuntimeError, match="1 of 9 samples"):
        check_bad_fraction(state, 0.05, min_samples=0)
    state = TrainerState(samples_seen=90, bad_samples=10)
    with pytest.raises(RuntimeError, match="max_bad_fraction"):
        check_bad_fraction(state, 0.05, min_samples=100)
    assert DataSection().bad_fraction_min_samples == 100


# Two processes ----------------------------------------------------------------------------------------------------


def _two_process_worker(rank: int, init_file: str, source: str, vocab: str, out_dir: str) -> None:
    """One process of a 2-process run through the real training loop (`TrainingRun.micro_batches`)."""
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", LOCAL_WORLD_SIZE="2")
    os.environ["ACCELERATE_USE_CPU"] = "1"
    torch.distributed.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    from videofirst.train.loop import TrainingRun

    recipe = PretrainRecipe()
    recipe.run.output_dir, recipe.run.trackers = str(Path(out_dir) / "run"), "none"
    recipe.optim.max_steps, recipe.optim.batch_size = 2, 2
    recipe.data = DATA  # 3 bad of 9: the default bad-fraction check waits for 100 samples
    run = TrainingRun(recipe, dispatch_batches=False)
    video_processor = VideoFirstVideoProcessor(
        size={"height": 16, "width": 32}, do_center_crop=False, do_normalize=False, do_rescale=False
    )
    processor = VideoFirstProcessor(video_processor=video_processor, tokenizer=BertTokenizerFast(vocab_file=vocab))
    # In order (no shuffling): process 0 reads rows 0-1, 4-5, 8-9; process 1 rows 2-3, 6-7, 10-11.
    loader = run.accelerator.prepare(build_dataloader(recipe.data, source, processor, batch_size=2, shuffle=False))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    state = run.start(scheduler, project="test")
    trained = []
    for batch, _ in run.micro_batches(loader, desc="test"):
        sizes = run.accelerator.gather(torch.tensor([len(batch["captions"])]))
        trained.append((batch["captions"], sizes.tolist()))
        run.end_micro_batch(batch, torch.zeros(()), videos=len(batch["captions"]))
    torch.save({"trained": trained, "state": vars(state)}, Path(out_dir) / f"rank{rank}.pt")
    run.accelerator.end_training()


def test_two_processes_train_on_equal_batches_and_count_once(clips, processor, tmp_path):
    """Rows 0 and 1 (process 0's whole first batch) and row 6 are bad. Every process skips the first step
    (nothing decodable on process 0), process 0 trims its second batch to 1 like process 1's, and each bad
    sample is counted once on both processes."""
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    source = manifest(clips, {0, 1, 6}, "two_processes.jsonl")
    vocab = tmp_path / "vocab.txt"
    processor.tokenizer.save_vocabulary(str(tmp_path))
    method = "fork" if sys.platform == "linux" else "spawn"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GLOO_SOCKET_IFNAME", os.environ.get("GLOO_SOCKET_IFNAME", "lo"))
        torch.multiprocessing.start_processes(
            _two_process_worker,
            args=(str(tmp_path / "rendezvous"), source, str(vocab), str(tmp_path)),
            nprocs=2,
            join=True,
            start_method=method,
        )
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    assert [captions for captions, _ in results[0]["trained"]] == [["clip 4"], ["clip 8", "clip 9"]]
    assert [captions for captions, _ in results[1]["trained"]] == [["clip 7"], ["clip 10", "clip 11"]]
    for result in results:
        assert [sizes for _, sizes in result["trained"]] == [[1, 1], [2, 2]]
        state = result["state"]
        assert (state["step"], state["batches_in_epoch"], state["bad_samples"], state["samples_seen"]) == (2, 3, 3, 6)


# Captions ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caption", "problem"),
    [(5, "a number"), (None, "missing"), ("", "empty"), ("   \t", "empty"), (["a"], "not a string")],
)
def test_bad_captions_are_refused_at_load_with_file_and_row(clips, caption, problem):
    rows = [{"video": f"clip{i}.mp4", "caption": f"clip {i}"} for i in range(4)]
    rows[2]["caption"] = caption
    path = clips / "captions.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with pytest.raises(ValueError, match=rf"{path}.*row 3 .*{problem}"):
        load_source(str(path))


def test_numeric_and_empty_csv_captions_are_refused(clips):
    numbers = clips / "numbers.csv"  # a column of numbers is read as numbers
    numbers.write_text("video,caption\nclip0.mp4,1\nclip1.mp4,2\n")
    with pytest.raises(ValueError, match=r"row 1 \(a number: 1\), row 2 \(a number: 2\)"):
        load_source(str(numbers))
    empty = clips / "empty.csv"
    empty.write_text("video,caption\nclip0.mp4,a bird\nclip1.mp4,\n")
    with pytest.raises(ValueError, match=rf"{empty}.*row 2 \(missing\)"):
        load_source(str(empty))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_non_utf8_manifest_names_file_and_row(clips, suffix):
    path = clips / f"latin1{suffix}"
    if suffix == ".csv":
        path.write_bytes(b"video,caption\nclip0.mp4,a bird\nclip1.mp4,caf\xe9\n")
    else:
        path.write_bytes(b'{"video": "clip0.mp4", "caption": "a bird"}\n{"video": "clip1.mp4", "caption": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=rf"{path} is not UTF-8.*line {3 if suffix == '.csv' else 2}"):
        load_source(str(path))


def test_bad_captions_in_shards_are_bad_samples(clips):
    from videofirst.data.shards import TarShardWriter

    video = (clips / "clip0.mp4").read_bytes()
    (clips / "captions").mkdir()
    writer = TarShardWriter(clips / "captions" / "shard-000000.tar")
    writer.add("a", {"json": json.dumps({"caption": "a bird"}).encode(), "mp4": video})
    writer.add("b", {"json": json.dumps({"caption": 7}).encode(), "mp4": video})
    writer.add("c", {"txt": b"   ", "mp4": video})
    writer.add("d", {"txt": b"caf\xe9", "mp4": video})
    writer.close()
    rows = load_source(str(clips / "captions"))
    assert rows["error"][0] is None
    assert "a number" in rows["error"][1] and "no caption" in rows["error"][2] and "UTF-8" in rows["error"][3]


def test_the_captioning_tokenizer_reads_captions_with_the_same_checks(clips):
    path = clips / "latin1_captions.jsonl"
    path.write_bytes(b'{"video": "clip0.mp4", "caption": "caf\xe9"}\n')
    with pytest.raises(ValueError, match=rf"{path} is not UTF-8.*line 1"):
        source_captions(str(path))
