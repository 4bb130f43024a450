"""Run by tests/test_hub.py in a fresh process: load a pushed repo from the stand-in Hub without `videofirst`.

    python hub_round_trip_script.py REPO_ID WORK_DIR LABELS_JSON     (HF_ENDPOINT points at the stand-in)

Saves the model's outputs on `WORK_DIR/inputs.pt` and the zero-shot pipeline's answer to `WORK_DIR/outputs.pt`,
then runs every Python snippet of the repo's README as written, in `WORK_DIR` (which holds `video.mp4` and
`another_video.mp4`) or, for the handler snippet, in a local clone of the repo.
"""

import json
import os
import re
import shutil
import sys

sys.modules["videofirst"] = None  # the package must not be importable: everything comes from the repo

import torch  # noqa: E402
from huggingface_hub import hf_hub_download, snapshot_download  # noqa: E402
from transformers import AutoModel, AutoProcessor, pipeline  # noqa: E402


def main() -> None:
    repo, work, labels = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    model = AutoModel.from_pretrained(repo, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(repo, trust_remote_code=True)
    inputs = torch.load(os.path.join(work, "inputs.pt"))
    with torch.no_grad():
        outputs = model(**inputs)
    video = os.path.join(work, "video.mp4")
    classifier = pipeline("zero-shot-video-classification", model=repo, trust_remote_code=True)
    torch.save(
        {
            "module": type(model).__module__,
            "video_embeds": outputs.video_embeds,
            "text_embeds": outputs.text_embeds,
            "logits_per_video": outputs.logits_per_video,
            "pixel_values_videos": processor(videos=[video], return_tensors="pt")["pixel_values_videos"],
            "zero_shot": classifier(video, candidate_labels=labels, hypothesis_template="a video of {}."),
        },
        os.path.join(work, "outputs.pt"),
    )

    readme = open(hf_hub_download(repo, "README.md"), encoding="utf-8").read()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    clone = snapshot_download(repo, local_dir=os.path.join(work, "clone"))
    shutil.copy(video, clone)
    for index, block in enumerate(blocks):
        in_clone = "from handler import" in block
        os.chdir(clone if in_clone else work)
        if in_clone:
            sys.path.insert(0, clone)  # as `python` started in the clone would have it
        exec(compile(block, f"README.md python block {index}", "exec"), {"__name__": "__main__"})
    print(f"README snippets ran: {len(blocks)}")


if __name__ == "__main__":
    main()
