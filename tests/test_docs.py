"""Every code block of the user guide runs as written: README.md, docs/*.md and training/benchmarks/README.md.

The pages are run in `PAGES` order in one workspace folder laid out like a checkout (`training/` and `tests/` are
links to this repository's), one subprocess per page (`docs_runner.py`) with this environment's `python` and
`accelerate` first on PATH. A page's python blocks share one namespace; each bash command (comment lines dropped,
`\\` continuations joined) is run by bash, unless `NOT_EXECUTED` names it with the reason. Nothing is shrunk: the
README's demo command trains the full 300-step demo, whose `runs/demo` the later snippets load, evaluate, export and
push. Pushing and every Hub id resolve through the offline stand-in Hub (`hub_server.py`, via `HF_ENDPOINT`); the
image–text models that docs/conversion.md converts are served under their Hub ids as small random models of the same
classes (nothing is downloaded). `text` blocks are program output, not code.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import pytest
import torch
from hub_server import HubStandIn
from huggingface_hub import HfApi
from tiny_sources import TEXT, tiny_clip, tiny_clip_tokenizer, tiny_siglip
from transformers import BertConfig, BertModel, BertTokenizerFast, CLIPImageProcessor

REPO = Path(__file__).resolve().parents[1]
TESTS = REPO / "tests"
PAGES = [
    "README.md",
    "docs/model.md",
    "docs/video.md",
    "docs/training.md",
    "docs/data.md",
    "docs/conversion.md",
    "docs/evaluation.md",
    "docs/video_to_text.md",
    "docs/hub.md",
    "training/benchmarks/README.md",
]
TOKEN = "hf_docs"
SOURCE_MODELS = ("google/siglip-base-patch16-224", "openai/clip-vit-base-patch16", "google/bert_uncased_L-8_H-512_A-8")
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *"abcdefghijklmnopqrstuvwxyz"]

# Commands shown but not run here, each with why. Every other bash command of the pages is executed.
NOT_EXECUTED = {
    "python3 -m venv .venv && . .venv/bin/activate": "creates an environment; .ci/run does the same from scratch",
    "pip install torch==2.14.1 torchvision==0.29.1": "installs packages; .ci/run installs the same versions",
    'pip install -e ".[dev]"': "installs the package; .ci/run runs this install",
    "python -m pytest tests -q": "the test suite itself (.ci/run runs it)",
    "accelerate launch training/pretrain.py --overwrite": "retrains the whole demo (2 min) only to show the flag",
    "accelerate launch training/pretrain.py --config training/configs/short_stage.yaml optim.max_steps=2000": (
        "ViT-B/16 + BERT-medium on a real video-text manifest: GPU-days, no such data here"
    ),
    "accelerate launch training/pretrain.py --config training/configs/long_stage_256.yaml": (
        "needs the short stage's export and a real video-text manifest"
    ),
    "accelerate launch training/pretrain.py --config training/configs/long_stage_256.yaml --resume": (
        "needs a long-stage run to resume"
    ),
    "accelerate launch training/train_video_to_text.py": (
        "the video-to-text demo, minutes of CPU; tests/train/test_video_to_text.py runs the same loop on a tiny recipe"
    ),
    "accelerate launch training/train_video_to_text.py model.vision_from=runs/demo/export": (
        "the video-to-text demo again on the demo's encoder, minutes of CPU"
    ),
}
# Commands on data or checkpoints a reader supplies (placeholders in capitals, or public benchmarks' files).
PLACEHOLDER = re.compile(r"\b(CKPT|V2T_CKPT)\b")
BENCHMARK_SCRIPT = re.compile(r"^python training/benchmarks/\w+\.py")


def code_blocks(page: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced block of `page`, in order."""
    text = (REPO / page).read_text(encoding="utf-8")
    return [(match[1], match[2]) for match in re.finditer(r"^```(\S*)\n(.*?)^```$", text, flags=re.M | re.S)]


def bash_commands(code: str) -> list[str]:
    """The commands of a bash block: comment-only lines dropped, continuations joined, trailing comments cut."""
    joined = re.sub(r"\\\n\s*", "", code)
    lines = (re.sub(r"(^|\s)#.*$", "", line).strip() for line in joined.splitlines())
    return [line for line in lines if line]


def page_bash_commands(page: str) -> list[str]:
    return [command for language, code in code_blocks(page) if language == "bash" for command in bash_commands(code)]


def not_executed_reason(command: str) -> str | None:
    if command in NOT_EXECUTED:
        return NOT_EXECUTED[command]
    if PLACEHOLDER.search(command):
        return "runs on a checkpoint and data the reader supplies (CKPT / V2T_CKPT stand for them)"
    if BENCHMARK_SCRIPT.match(command):
        return "a benchmark run, minutes to an hour (its time is written beside it); its tables are committed"
    return None


def page_steps(page: str) -> list[dict]:
    steps = []
    for index, (language, code) in enumerate(code_blocks(page)):
        if language == "python":
            steps.append({"label": f"{page} python block {index}", "language": "python", "code": code})
        elif language == "bash":
            for command in bash_commands(code):
                if not_executed_reason(command) is None:
                    steps.append({"label": f"{page} bash: {command}", "language": "bash", "code": command})
    return steps


def test_every_page_is_listed():
    pages = {str(path.relative_to(REPO)) for path in (REPO / "docs").glob("*.md")}
    assert pages | {"README.md", "training/benchmarks/README.md"} == set(PAGES)


def test_every_block_names_its_language():
    for page in PAGES:
        languages = {language for language, _ in code_blocks(page)}
        assert languages <= {"python", "bash", "text"}, f"{page}: a code block needs python, bash or text"


def test_every_listed_command_is_in_the_pages():
    commands = {command for page in PAGES for command in page_bash_commands(page)}
    assert set(NOT_EXECUTED) <= commands, f"listed but in no page: {set(NOT_EXECUTED) - commands}"


def test_readme_test_command_is_the_ci_command():
    ci = (REPO / ".ci" / "run").read_text()
    command = ci.split("# The README's test command:\n", 1)[1].strip()
    readme_commands = page_bash_commands("README.md")
    assert command in readme_commands
    assert readme_commands.index("accelerate launch training/pretrain.py") < readme_commands.index(command)


def _serve_source_models(hub_url: str, folder: Path) -> None:
    """Small random CLIP, SigLIP and BERT checkpoints under the Hub ids docs/conversion.md names."""
    api = HfApi(endpoint=hub_url, token=TOKEN)
    siglip, clip, bert = (folder / name for name in ("siglip", "clip", "bert"))
    tiny_siglip().save_pretrained(siglip)
    tiny_clip().save_pretrained(clip)
    tiny_clip_tokenizer().save_pretrained(clip)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32).save_pretrained(clip)
    torch.manual_seed(0)
    BertModel(BertConfig(**TEXT)).save_pretrained(bert)
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    BertTokenizerFast(vocab=str(folder / "vocab.txt")).save_pretrained(bert)
    for repo_id, local in zip(SOURCE_MODELS, (siglip, clip, bert)):
        api.create_repo(repo_id)
        api.upload_folder(repo_id=repo_id, folder_path=local)


@pytest.fixture(scope="module")
def ran_pages(tmp_path_factory) -> dict[str, dict]:
    """Runs every page in order in one workspace; returns each page's steps and result."""
    work = tmp_path_factory.mktemp("docs")
    workspace = work / "workspace"
    workspace.mkdir()
    for name in ("training", "tests"):
        (workspace / name).symlink_to(REPO / name)
    results = {}
    with pytest.MonkeyPatch.context() as patch:
        # huggingface_hub reads HF_HUB_DISABLE_XET at import time; Xet needs servers the stand-in does not have.
        patch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_XET", True)
        with HubStandIn(tokens={TOKEN: "you"}) as hub:
            _serve_source_models(hub.url, work / "sources")
            env = {
                **os.environ,
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                "HF_ENDPOINT": hub.url,
                "HF_TOKEN": TOKEN,
                "HF_HOME": str(work / "hf_home"),
                "HF_HUB_DISABLE_XET": "1",
                "HF_HUB_DISABLE_TELEMETRY": "1",
                "TQDM_DISABLE": "1",
            }
            for page in PAGES:
                steps = page_steps(page)
                slug = page.replace("/", "_")
                (work / f"{slug}.steps.json").write_text(json.dumps(steps))
                run = subprocess.run(
                    [sys.executable, str(TESTS / "docs_runner.py"), work / f"{slug}.steps.json", work / f"{slug}.json"],
                    cwd=workspace,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=1800,
                )
                result_file = work / f"{slug}.json"
                result = json.loads(result_file.read_text()) if result_file.exists() else {"failed": "runner"}
                if run.returncode != 0 and result.get("failed") is None:
                    result = {"failed": "runner", "error": run.stderr[-5000:]}
                results[page] = {"steps": steps, **result}
    return results


@pytest.mark.slow
@pytest.mark.timeout(3000)  # the first page's setup runs every page: about 12 minutes on 2 busy CPU cores
@pytest.mark.parametrize("page", PAGES)
def test_page_runs_as_written(ran_pages, page):
    result = ran_pages[page]
    assert result["failed"] is None, f"{result['failed']} failed:\n{result.get('error')}"
    assert result["done"] == [step["label"] for step in result["steps"]]
