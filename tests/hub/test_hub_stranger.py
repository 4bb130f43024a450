"""The stranger's path, end to end and offline: export -> push to a stand-in Hub -> a fresh environment with only the
export's requirements.txt (no `videofirst`, no PyAV) -> every way a transformers user loads and runs the checkpoint,
on a real clip (tests/data/cockatoo.mp4).

The fresh environment (`fresh_environment.py`) holds exactly the installed distributions that requirements.txt
resolves to, so transformers' remote-code import check sees an undeclared package as not installed. The stranger's
steps run in one subprocess (`hub_round_trip_script.py`); each step is reported by its own test here, against the
same computation done in this process with the package installed.
"""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import fresh_environment
import huggingface_hub.constants
import pytest
import torch
from hub_server import EndpointServer, HubStandIn
from huggingface_hub import HfApi
from tiny_models import tiny_model, tiny_processor
from video_fixtures import write_video
from videofirst.modeling.processing_videofirst import VideoFirstProcessor

from videofirst.hub.cards import ModelCardOptions
from videofirst.hub.export import export_checkpoint
from videofirst.hub.push import push_to_hub

pytestmark = pytest.mark.slow

TESTS = Path(__file__).resolve().parents[1]
CLIP = TESTS / "data" / "cockatoo.mp4"
TOKEN = "hf_test"
REPO_ID = "tester/videofirst-stranger"
PLAIN_REPO_ID = "tester/videofirst-plain-save"
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "bird", "cockatoo", "dog", "runs", "dancing", "of"]
VOCAB += ["video", "person", "cooking", "cycling", "riding", "bike", "sings", "on", "the", "perch"]
LABELS = ["a cockatoo dancing", "a dog runs", "a person cooking"]
QUERIES = ["a bird on the perch", "a person riding a bike"]
LONG_CAPTION = " ".join(["a cockatoo dancing on the perch"] * 40)  # 200 words, the text tower has 64 positions


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("stranger")


@pytest.fixture(scope="module")
def processor(work) -> VideoFirstProcessor:
    return tiny_processor(work, VOCAB)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return tiny_model().eval()


@pytest.fixture(scope="module")
def stranger(work, model, processor):
    """Exports, pushes, builds the fresh environment and runs the stranger's steps; returns their results."""
    export = export_checkpoint(model, processor, work / "export", card=ModelCardOptions(repo_id=REPO_ID))
    run_dir = work / "stranger"
    run_dir.mkdir()
    shutil.copyfile(CLIP, run_dir / "video.mp4")
    write_video(run_dir / "another_video.mp4", 8, fps=4, height=48, width=64)
    (run_dir / "inputs.json").write_text(
        json.dumps({"labels": LABELS, "queries": QUERIES, "long_caption": LONG_CAPTION, "plain_repo": PLAIN_REPO_ID})
    )
    inputs = processor(videos=[str(CLIP)], text=LABELS, return_tensors="pt")
    torch.save(dict(inputs), run_dir / "model_inputs.pt")
    environment = fresh_environment.build(export / "requirements.txt", work / "site")
    with pytest.MonkeyPatch.context() as patch:
        # huggingface_hub reads HF_HUB_DISABLE_XET at import time; Xet needs servers the stand-in does not have.
        patch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
        with HubStandIn(tokens={TOKEN: "tester"}) as hub, EndpointServer(_handler(export), TOKEN) as endpoint:
            push_to_hub(export, REPO_ID, endpoint=hub.url, token=TOKEN)
            model.save_pretrained(work / "plain")
            processor.save_pretrained(work / "plain")
            api = HfApi(endpoint=hub.url, token=TOKEN)
            api.create_repo(PLAIN_REPO_ID)
            api.upload_folder(repo_id=PLAIN_REPO_ID, folder_path=work / "plain")
            result = fresh_environment.run(
                work / "site",
                [str(TESTS / "hub_round_trip_script.py"), REPO_ID, str(run_dir)],
                env={
                    "HF_ENDPOINT": hub.url,
                    "HF_HUB_DISABLE_XET": "1",
                    "HF_HOME": str(work / "hf_home"),
                    "HF_TOKEN": TOKEN,
                    "HF_HUB_DISABLE_TELEMETRY": "1",
                    "ENDPOINT_URL": endpoint,  # the card's client snippet calls the handler served here
                },
                cwd=run_dir,
                timeout=600,
            )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert not hub.unhandled, f"the client called routes the stand-in does not implement: {hub.unhandled}"
    return {
        "environment": environment,
        "results": torch.load(run_dir / "outputs.pt", weights_only=False),
        "inputs": inputs,
        "export": export,
    }


def _handler(export: Path):
    spec = importlib.util.spec_from_file_location("videofirst_stranger_handler", export / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EndpointHandler(str(export))


def step(stranger, name):
    result = stranger["results"][name]
    assert result["ok"], f"step {name} failed in the fresh environment:\n{result['error']}"
    return result["value"]


def test_fresh_environment_has_only_the_declared_requirements(stranger, work):
    environment = stranger["environment"]
    assert {"transformers", "torch", "decord"} <= set(environment)
    assert "videofirst" not in environment
    # The stranger's process never imported videofirst.
    assert [name for name in stranger["results"]["modules"] if name.split(".")[0] == "videofirst"] == []
    probe = fresh_environment.run(
        work / "site", ["-c", "import importlib.util as u; print([m for m in ('videofirst',) if u.find_spec(m)])"]
    )
    assert probe.stdout.strip() == "[]", probe.stderr


def test_requirements_name_exactly_what_the_shipped_code_imports(stranger):
    from transformers.dynamic_module_utils import get_imports

    export = stranger["export"]
    imported = {name for path in export.glob("*.py") for name in get_imports(path)}
    third_party = {name for name in imported if name not in sys.stdlib_module_names}
    requirements = {
        requirement.name.lower() for requirement in fresh_environment.read_requirements(export / "requirements.txt")
    }
    import_names = {"PIL": "pillow", "huggingface_hub": "huggingface_hub"}
    assert {import_names.get(name, name).lower() for name in third_party} <= requirements
    # Nothing else but the two video decoders (imported where used; PyAV also builds the frame index both decoders
    # read) and what transformers' video processors need.
    assert requirements - {import_names.get(name, name).lower() for name in third_party} == {
        "av",
        "decord",
        "torchvision",
    }


def test_auto_model(stranger, model):
    value = step(stranger, "auto_model")
    assert value["module"].startswith("transformers_modules")
    with torch.no_grad():
        local = model(**stranger["inputs"])
    for name in ("video_embeds", "text_embeds", "logits_per_video"):
        torch.testing.assert_close(value[name], getattr(local, name), rtol=0, atol=1e-6)


def test_auto_processor_truncates_long_captions(stranger, processor):
    value = step(stranger, "auto_processor")
    assert value["class"] == "VideoFirstProcessor"
    assert torch.equal(value["pixel_values_videos"], stranger["inputs"]["pixel_values_videos"])
    assert value["input_ids"].shape[1] == 64  # the text tower's max_position_embeddings
    assert torch.isfinite(value["long_caption_logits"]).all()


def test_auto_video_processor(stranger):
    value = step(stranger, "auto_video_processor")
    assert value["class"] == "VideoFirstVideoProcessor"
    assert torch.equal(value["pixel_values_videos"], stranger["inputs"]["pixel_values_videos"])


def test_zero_shot_pipeline_batched(stranger, model, processor):
    value = step(stranger, "zero_shot_pipeline")
    batched, single = value["batched"], value["single"]
    assert len(batched) == 3 and all(len(rows) == len(LABELS) for rows in batched)
    assert [list(row)[:2] for row in single] == [["score", "label"]] * len(LABELS)
    for rows in (batched[0], batched[2]):  # the same clip, batched with another video (padded) and alone
        assert [row["label"] for row in rows] == [row["label"] for row in single]
        assert [row["score"] for row in rows] == pytest.approx([row["score"] for row in single], abs=1e-5)
    texts = processor(text=[f"a video of {label}." for label in LABELS], return_tensors="pt")
    with torch.no_grad():
        expected = model(**stranger["inputs"] | dict(texts)).logits_per_video.softmax(-1)[0]
    assert {row["label"]: row["score"] for row in single} == pytest.approx(dict(zip(LABELS, expected.tolist())))


def test_retrieval_pipeline_batched(stranger):
    value = step(stranger, "retrieval_pipeline")
    batched, single = value["batched"], value["single"]
    assert len(batched) == len(QUERIES) and all(len(rows) == 2 for rows in batched)
    assert [list(row)[:2] for row in single] == [["score", "video_index"]] * 2
    assert [row["video_index"] for row in batched[0]] == [row["video_index"] for row in single]
    assert [row["score"] for row in batched[0]] == pytest.approx([row["score"] for row in single], abs=1e-6)


def test_handler(stranger, model, processor):
    value = step(stranger, "handler")
    assert "error" not in value, value
    first, second = value["results"]
    assert first == second and first["num_frames"] == 4
    texts = processor(text=LABELS, return_tensors="pt")
    with torch.no_grad():
        expected = model(**stranger["inputs"] | dict(texts)).logits_per_video.softmax(-1)[0]
    assert {row["label"]: row["score"] for row in first["scores"]} == pytest.approx(
        dict(zip(LABELS, expected.tolist()))
    )


def test_vision_sub_model_loads_from_the_full_checkpoint(stranger, model):
    result = stranger["results"]["vision_model"]
    value = result.get("value") or {"loading_info": {"missing_keys": ["(loading failed)"]}}
    if not result["ok"] and "initializer_range" not in result["error"]:
        pytest.fail(f"loading the vision tower failed:\n{result['error']}")
    assert not value["loading_info"]["missing_keys"], value["loading_info"]["missing_keys"]
    assert not value["loading_info"]["unexpected_keys"], value["loading_info"]["unexpected_keys"]
    inputs = stranger["inputs"]
    with torch.no_grad():
        expected = model.vision_model(
            pixel_values_videos=inputs["pixel_values_videos"], video_frame_mask=inputs["video_frame_mask"]
        ).pooler_output
    torch.testing.assert_close(value["pooler_output"], expected, rtol=0, atol=1e-6)


def test_plain_save_pretrained_loads_without_videofirst(stranger, model, processor):
    value = step(stranger, "plain_save_pretrained")
    assert value["module"].startswith("transformers_modules")
    with torch.no_grad():
        expected = model(**stranger["inputs"]).logits_per_video
    torch.testing.assert_close(value["logits_per_video"], expected, rtol=0, atol=1e-5)


def test_readme_snippets_run_as_written(stranger):
    assert step(stranger, "readme_snippets")["blocks"] == 4
