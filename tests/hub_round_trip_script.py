"""Run by tests/hub/test_hub_stranger.py as the stranger: a fresh environment with only the export's requirements.txt.

    python -S hub_round_trip_script.py REPO_ID WORK_DIR     (HF_ENDPOINT points at the stand-in Hub)

`WORK_DIR` holds `video.mp4` (a real clip), `another_video.mp4`, `inputs.json` (labels, queries, a long caption)
and `model_inputs.pt` (processed inputs from the test process); `inputs.json` also names a second repo written by
plain `save_pretrained` calls. Every step of the Hub user's path runs on its own:
its result, or the traceback that stopped it, is saved under the step's name in `WORK_DIR/outputs.pt`, so the test
reports each step separately. The last step runs every Python snippet of the repo's README as written.
"""

import json
import os
import re
import shutil
import sys
import traceback

import torch
from huggingface_hub import hf_hub_download, snapshot_download
from transformers import AutoModel, AutoProcessor, AutoVideoProcessor, pipeline
from transformers.dynamic_module_utils import get_class_from_dynamic_module


def step_auto_model(repo, work, spec):
    model = AutoModel.from_pretrained(repo, trust_remote_code=True).eval()
    inputs = torch.load(os.path.join(work, "model_inputs.pt"))
    with torch.no_grad():
        outputs = model(**inputs)
    return {
        "module": type(model).__module__,
        "video_embeds": outputs.video_embeds,
        "text_embeds": outputs.text_embeds,
        "logits_per_video": outputs.logits_per_video,
    }


def step_auto_processor(repo, work, spec):
    processor = AutoProcessor.from_pretrained(repo, trust_remote_code=True)
    model = AutoModel.from_pretrained(repo, trust_remote_code=True).eval()
    # The card's own model + processor use, with a caption longer than the text tower's positions.
    inputs = processor(videos=[os.path.join(work, "video.mp4")], text=[spec["long_caption"]], return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits_per_video
    return {
        "class": type(processor).__name__,
        "pixel_values_videos": inputs["pixel_values_videos"],
        "video_frame_mask": inputs["video_frame_mask"],
        "input_ids": inputs["input_ids"],
        "long_caption_logits": logits,
    }


def step_auto_video_processor(repo, work, spec):
    video_processor = AutoVideoProcessor.from_pretrained(repo, trust_remote_code=True)
    batch = video_processor([os.path.join(work, "video.mp4")], return_tensors="pt")
    return {"class": type(video_processor).__name__, "pixel_values_videos": batch["pixel_values_videos"]}


def step_zero_shot_pipeline(repo, work, spec):
    classifier = pipeline("zero-shot-video-classification", model=repo, trust_remote_code=True)
    videos = [os.path.join(work, name) for name in ("video.mp4", "another_video.mp4", "video.mp4")]
    return {
        "batched": classifier(videos, candidate_labels=spec["labels"], batch_size=2),
        "single": classifier(videos[0], candidate_labels=spec["labels"]),
    }


def step_retrieval_pipeline(repo, work, spec):
    ranker = pipeline("text-to-video-retrieval", model=repo, trust_remote_code=True)
    videos = [os.path.join(work, name) for name in ("video.mp4", "another_video.mp4")]
    return {
        "batched": ranker(spec["queries"], videos=videos, batch_size=2),
        "single": ranker(spec["queries"][0], videos=videos),
    }


def step_handler(repo, work, spec):
    import base64

    clone = snapshot_download(repo, local_dir=os.path.join(work, "handler_clone"))
    sys.path.insert(0, clone)
    try:
        from handler import EndpointHandler
    finally:
        sys.path.remove(clone)
    handler = EndpointHandler(clone)
    with open(os.path.join(work, "video.mp4"), "rb") as file:
        video = base64.b64encode(file.read()).decode()
    return handler({"inputs": [video, video], "parameters": {"candidate_labels": spec["labels"]}})


def step_vision_model(repo, work, spec):
    # transformers' way to reach a remote class other than the auto_map's: the checkpoint's own module.
    vision_class = get_class_from_dynamic_module("modeling_videofirst.VideoFirstVisionModel", repo)
    vision, info = vision_class.from_pretrained(repo, output_loading_info=True)
    inputs = torch.load(os.path.join(work, "model_inputs.pt"))
    with torch.no_grad():
        pooled = vision.eval()(
            pixel_values_videos=inputs["pixel_values_videos"], video_frame_mask=inputs["video_frame_mask"]
        ).pooler_output
    return {"loading_info": {key: sorted(value) for key, value in info.items()}, "pooler_output": pooled}


def step_plain_save_pretrained(repo, work, spec):
    # A repo written by plain `model.save_pretrained` + `processor.save_pretrained`, not by export_checkpoint.
    plain = spec["plain_repo"]
    model = AutoModel.from_pretrained(plain, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(plain, trust_remote_code=True)
    inputs = processor(videos=[os.path.join(work, "video.mp4")], text=spec["labels"], return_tensors="pt")
    with torch.no_grad():
        outputs = model(**inputs)
    return {"module": type(model).__module__, "logits_per_video": outputs.logits_per_video}


def step_readme_snippets(repo, work, spec):
    readme = open(hf_hub_download(repo, "README.md"), encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    clone = snapshot_download(repo, local_dir=os.path.join(work, "clone"))
    shutil.copy(os.path.join(work, "video.mp4"), clone)
    cwd = os.getcwd()
    try:
        for index, block in enumerate(blocks):
            in_clone = "from handler import" in block
            os.chdir(clone if in_clone else work)
            if in_clone:
                sys.path.insert(0, clone)  # as `python` started in the clone would have it
            exec(compile(block, f"README.md python block {index}", "exec"), {"__name__": "__main__"})
    finally:
        os.chdir(cwd)
    return {"blocks": len(blocks)}


STEPS = {name[len("step_") :]: step for name, step in globals().items() if name.startswith("step_")}


def main() -> None:
    repo, work = sys.argv[1], sys.argv[2]
    spec = json.loads(open(os.path.join(work, "inputs.json")).read())
    results = {}
    for name, step in STEPS.items():
        try:
            results[name] = {"ok": True, "value": step(repo, work, spec)}
        except Exception:
            results[name] = {"ok": False, "error": traceback.format_exc()}
        print(f"{name}: {'ok' if results[name]['ok'] else 'FAILED'}", flush=True)
    results["modules"] = sorted(name for name in sys.modules if name.split(".")[0] in ("videofirst", "av"))
    torch.save(results, os.path.join(work, "outputs.pt"))


if __name__ == "__main__":
    main()
