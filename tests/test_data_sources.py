"""Data sources (manifest, folder, tar shards, Hub cache), weighted mixing, streaming, and bad samples."""

import io
import json
import shutil
import tarfile
import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.data_loader import prepare_data_loader
from PIL import Image
from transformers import BertTokenizerFast
from video_fixtures import frame_ids, index_frame, write_video
from videofirst.modeling.processing_videofirst import VideoFirstProcessor
from videofirst.modeling.video_processing_videofirst import VideoFirstVideoProcessor

from videofirst.data.loading import MediaTextDataset, MixedMediaTextDataset, build_dataloader
from videofirst.data.shards import TarShardWriter
from videofirst.data.sources import load_source, parse_sources, resolve_source, source_captions, training_sources
from videofirst.recipe import DataSection

CLIPS = 8
DATA = DataSection(num_frames=4, fps=2.0, num_workers=0, shuffle_buffer=4)


def write_shards(folder: Path, samples: list[tuple[str, dict[str, bytes]]], per_shard: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for start in range(0, len(samples), per_shard):
        writer = TarShardWriter(folder / f"shard-{start // per_shard:06d}.tar")
        for key, files in samples[start : start + per_shard]:
            writer.add(key, files)
        writer.close()
        paths.append(writer.path)
    return paths


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """The same 8 clips as a JSONL and a CSV manifest, a metadata folder, and 2 tar shards; plus 4 images."""
    root = tmp_path_factory.mktemp("sources")
    (root / "clips").mkdir()
    rows, samples = [], []
    for index in range(CLIPS):
        path = write_video(root / "clips" / f"clip{index}.mp4", 20, fps=10, height=32, width=64)  # 2 s
        rows.append({"video": f"clips/clip{index}.mp4", "caption": f"clip {index}"})
        meta = json.dumps({"caption": f"clip {index}"}).encode()
        samples.append((f"{index:06d}", {"json": meta, "mp4": path.read_bytes()}))
    (root / "clips.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (root / "clips.csv").write_text("video,caption\n" + "".join(f"{r['video']},{r['caption']}\n" for r in rows))
    (root / "clips" / "metadata.jsonl").write_text(
        "".join(json.dumps({"file_name": f"clip{i}.mp4", "text": f"clip {i}"}) + "\n" for i in range(CLIPS))
    )
    write_shards(root / "shards", samples, per_shard=4)
    (root / "images").mkdir()
    images = []
    for index in range(4):
        Image.fromarray(index_frame(index, 32, 32)).save(root / "images" / f"image{index}.png")
        images.append({"image": f"images/image{index}.png", "caption": f"image {index}"})
    (root / "images.jsonl").write_text("".join(json.dumps(row) + "\n" for row in images))
    return root


@pytest.fixture(scope="module")
def processor(tmp_path_factory) -> VideoFirstProcessor:
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "clip", "image", *map(str, range(9))]))
    video_processor = VideoFirstVideoProcessor(
        size={"height": 32, "width": 64}, do_center_crop=False, do_normalize=False, do_rescale=False
    )
    return VideoFirstProcessor(video_processor=video_processor, tokenizer=BertTokenizerFast(vocab_file=str(vocab)))


def captions(loader, batches: int | None = None) -> list[list[str]]:
    out = []
    for batch in loader:
        out.append(batch["captions"])
        if batches is not None and len(out) == batches:
            break
    return out


# Sources ---------------------------------------------------------------------------------------------------------


def test_manifest_folder_and_tar_shards_give_the_same_samples(collection, processor):
    specs = ["clips.jsonl", "clips.csv", "clips", "shards", "shards/*.tar", "shards/shard-{000000..000001}.tar"]
    reference = None
    for spec in specs:
        rows = load_source(str(collection / spec))
        assert sorted(rows["caption"]) == [f"clip {i}" for i in range(CLIPS)], spec
        dataset = MediaTextDataset(rows, processor.video_processor, DATA)
        item = dataset[rows["caption"].index("clip 5")]
        assert item["modality"] == "video" and item["skipped"] == 0
        assert frame_ids(item["pixels"]) == [0, 5, 10, 15]  # 2 FPS over 2 s of the 10 fps clip
        reference = item["pixels"] if reference is None else reference
        assert torch.equal(item["pixels"], reference), spec
    single = load_source(str(collection / "shards" / "shard-000001.tar"))
    assert single["caption"] == [f"clip {i}" for i in range(4, 8)] and single["offset"][0] % 512 == 0
    assert resolve_source(str(collection / "clips")).kind == "manifest"


def test_hub_dataset_ids_are_read_from_the_local_cache_first(collection, tmp_path, monkeypatch):
    from huggingface_hub import constants

    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "datasets--tester--clips"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    shutil.copytree(collection / "shards", repo / "snapshots" / revision / "data")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # proves no network is touched
    rows = load_source("tester/clips")
    assert sorted(rows["caption"]) == [f"clip {i}" for i in range(CLIPS)]
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache"):
        load_source("tester/missing")


def test_source_errors(collection, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_source(str(tmp_path / "missing.jsonl"))
    with pytest.raises(FileNotFoundError, match="neither a metadata file"):
        load_source(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="neither a manifest"):
        load_source(str(tmp_path / "notes.txt"))
    with pytest.raises(FileNotFoundError, match="No shards match"):
        load_source(str(tmp_path / "shard-*.tar"))
    with pytest.raises(ValueError, match="positive number"):
        parse_sources([{"source": "a.jsonl", "weight": 0}])
    with pytest.raises(ValueError, match=r"\{source: ..., weight: ...\}"):
        parse_sources([{"path": "a.jsonl"}])
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copy(collection / "clips" / "clip0.mp4", mixed / "a.mp4")
    shutil.copy(collection / "images" / "image0.png", mixed / "b.png")
    (mixed / "metadata.csv").write_text("file_name,caption\na.mp4,a clip\nb.png,a picture\n")
    with pytest.raises(ValueError, match="mixes modalities"):
        MediaTextDataset(load_source(str(mixed)), None, DATA)
    # Unreadable samples do not count as a modality: an image shard with a broken sample is an image source.
    png = (collection / "images" / "image0.png").read_bytes()
    write_shards(tmp_path / "pictures", [("a", {"txt": b"a picture", "png": png}), ("b", {"txt": b"no media"})], 2)
    assert MediaTextDataset(load_source(str(tmp_path / "pictures")), None, DATA).modality == "image"


def test_bad_samples_in_shards_are_skipped_and_counted(collection, tmp_path, processor):
    good = (collection / "clips" / "clip0.mp4").read_bytes()
    caption = json.dumps({"caption": "clip 0"}).encode()
    samples = [
        ("a", {"json": caption, "mp4": good}),
        ("b", {"json": caption, "mp4": b"\x00\x00\x00\x18ftypmp42" + b"junk" * 64}),  # corrupt video
        ("c", {"mp4": good}),  # no caption
        ("d", {"json": b"{not json", "mp4": good}),
        ("e", {"json": caption, "mp4": good[: len(good) // 2]}),  # truncated video
        ("f", {"json": caption, "txt": b"unused", "mp4": good}),
    ]
    write_shards(tmp_path / "bad", samples, per_shard=6)
    (damaged,) = write_shards(tmp_path / "more", samples[:1] * 3, per_shard=3)
    (tmp_path / "bad" / "shard-000001.tar").write_bytes(damaged.read_bytes()[:3000])  # cut inside its 2nd sample

    started = time.monotonic()
    # Map-style: b, c, d, e, the sample cut by the damage and the damaged rest of the shard, each counted once and
    # dropped from its batch. Streaming fills batches with the next good samples and counts each failure in the
    # next good one, so failures after the last good sample of a finite stream are not counted.
    for streaming, sizes, bad in ((False, [1, 0, 1, 0], 6), (True, [2], 4)):
        data = DataSection(**{**DATA.__dict__, "streaming": streaming})
        loader = build_dataloader(data, str(tmp_path / "bad"), processor, batch_size=2, shuffle=False)
        batches = list(loader)
        assert [len(batch["captions"]) for batch in batches] == sizes, streaming
        assert [caption for batch in batches for caption in batch["captions"]] == ["clip 0"] * 2
        assert sum(int(batch["skipped"].sum()) for batch in batches) == bad, streaming
    assert time.monotonic() - started < 30


# Mixing ----------------------------------------------------------------------------------------------------------


def test_weighted_mix_is_batch_level_and_deterministic(collection, processor):
    mix = [{"source": str(collection / "clips.jsonl"), "weight": 3}, {"source": str(collection / "images.jsonl")}]
    loader = build_dataloader(DATA, mix, processor, batch_size=2, shuffle=True, seed=7)
    dataset = loader.dataset
    assert isinstance(dataset, MixedMediaTextDataset) and dataset.counts == [5, 1]  # 6 batches split 3:1
    epoch0 = captions(loader)
    assert len(epoch0) == 6 and sorted(batch[0].split()[0] for batch in epoch0) == ["clip"] * 5 + ["image"]
    assert all(len({caption.split()[0] for caption in batch}) == 1 for batch in epoch0)  # one modality per batch
    assert captions(build_dataloader(DATA, mix, processor, batch_size=2, shuffle=True, seed=7)) == epoch0
    # Each source is a stream of permutations that continues across epochs: all 8 clips before any repeat.
    clips0 = [c for batch in epoch0 for c in batch if c.startswith("clip")]
    assert sorted(clips0[:CLIPS]) == [f"clip {i}" for i in range(CLIPS)]
    dataset.set_epoch(1)
    epoch1 = captions(loader)
    clips1 = [c for batch in epoch1 for c in batch if c.startswith("clip")]
    assert clips1 != clips0 and sorted(clips0[CLIPS:] + clips1[: 2 * CLIPS - len(clips0)]) == sorted(clips0[:CLIPS])

    # With accelerate: set_epoch reaches the dataset, and skip_first_batches replays the rest of the epoch.
    accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    prepared = accelerator.prepare(build_dataloader(DATA, mix, processor, batch_size=2, shuffle=True, seed=7))
    prepared.set_epoch(1)
    assert captions(prepared) == epoch1
    prepared.set_epoch(1)
    assert captions(accelerator.skip_first_batches(prepared, 4)) == epoch1[4:]
    # Two processes take alternate batches of the same schedule.
    shards = []
    for process in range(2):
        base = build_dataloader(DATA, mix, processor, batch_size=2, shuffle=True, seed=7)
        shard = prepare_data_loader(base, num_processes=2, process_index=process, put_on_device=False)
        shard.set_epoch(0)
        shards.append(captions(shard))
    assert shards[0] == epoch0[0::2] and shards[1] == epoch0[1::2]


def test_single_source_keeps_the_plain_shuffled_loader(collection, processor):
    loader = build_dataloader(DATA, str(collection / "clips.jsonl"), processor, batch_size=4, shuffle=True)
    assert isinstance(loader.dataset, MediaTextDataset) and isinstance(loader.sampler, torch.utils.data.RandomSampler)
    assert training_sources(DataSection(train_manifest="a.jsonl")) == "a.jsonl"
    mix = [{"source": "a.jsonl", "weight": 2.0}]
    assert training_sources(DataSection(train_sources=mix)) == mix
    evaluation = build_dataloader(
        DATA, [str(collection / "clips.jsonl"), str(collection / "shards")], processor, batch_size=4, shuffle=False
    )
    assert len(evaluation.dataset) == 2 * CLIPS
    assert source_captions([str(collection / "clips.csv"), str(collection / "images.jsonl")])[-1] == "image 3"


# Streaming -------------------------------------------------------------------------------------------------------


def test_streaming_shards_with_workers_accelerate_and_resume(collection, processor):
    data = DataSection(**{**DATA.__dict__, "streaming": True, "num_workers": 2})
    source = str(collection / "shards")

    def loader():
        return build_dataloader(data, source, processor, batch_size=2, shuffle=True, seed=3)

    stream = captions(loader(), batches=10)  # 20 samples from 8 clips: a training stream is endless
    assert all(len(batch) == 2 for batch in stream) and captions(loader(), batches=10) == stream
    assert {c for batch in stream for c in batch} == {f"clip {i}" for i in range(CLIPS)}
    finite = captions(build_dataloader(data, source, processor, batch_size=2, shuffle=False))
    assert sorted(c for batch in finite for c in batch) == [f"clip {i}" for i in range(CLIPS)]

    accelerator = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(dispatch_batches=False))
    prepared = accelerator.prepare(loader())
    prepared.set_epoch(0)
    assert captions(prepared, batches=6) == stream[:6]
    prepared.set_epoch(0)
    assert captions(accelerator.skip_first_batches(prepared, 3), batches=3) == stream[3:6]
    # Two processes read disjoint shards (2 shards, one each, which one depends on the shuffled shard order).
    seen = []
    for process in range(2):
        options = dict(num_processes=2, process_index=process, put_on_device=False, dispatch_batches=False)
        shard = prepare_data_loader(loader(), **options)
        seen.append({c for batch in captions(shard, batches=4) for c in batch})
    assert sorted(map(sorted, seen)) == [[f"clip {i}" for i in range(4)], [f"clip {i}" for i in range(4, 8)]]


def test_streaming_mix_must_share_a_modality(collection, processor):
    data = DataSection(**{**DATA.__dict__, "streaming": True})
    mix = [{"source": str(collection / "shards"), "weight": 1}, {"source": str(collection / "clips.jsonl")}]
    batches = captions(build_dataloader(data, mix, processor, batch_size=2, shuffle=True, seed=0), batches=4)
    assert all(c.startswith("clip") for batch in batches for c in batch)
    images = [*mix, {"source": str(collection / "images.jsonl")}]
    with pytest.raises(ValueError, match="modalit"):
        captions(build_dataloader(data, images, processor, batch_size=4, shuffle=True, seed=0), batches=8)


def test_tar_members_are_plain_webdataset(collection):
    with tarfile.open(collection / "shards" / "shard-000000.tar") as archive:
        names = archive.getnames()
    assert names[:2] == ["000000.json", "000000.mp4"]
    assert json.load(io.BytesIO(tarfile.open(collection / "shards" / "shard-000000.tar").extractfile(names[0]).read()))


def test_decode_benchmark_smoke(tmp_path):
    """The decoding benchmark end to end on the short real clip (numbers are meaningless at this size)."""
    import importlib.util

    from video_fixtures import REAL_CLIP

    path = Path(__file__).resolve().parents[1] / "training" / "benchmarks" / "decode.py"
    spec = importlib.util.spec_from_file_location("decode_benchmark", path)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    assert benchmark.main(["--video", str(REAL_CLIP), "--frames", "4", "--repeats", "1", "--out", str(tmp_path)]) == 0
    rows = (tmp_path / "decode.csv").read_text().splitlines()
    assert len(rows) == 1 + 9 and all(row.endswith(",4") or "sequential" in row for row in rows[1:])
    report = (tmp_path / "decode.md").read_text()
    assert "| (a) default backend within 1.2x of (c) |" in report and "`fast_snap_inf`" in report
