"""A training run's model card: the run's own evaluation reaches its export, and each evaluation appears once."""

import importlib.util
import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from test_pretraining import DEMO, tiny_overrides, write_tiny_data

import videofirst.train.pretraining as pretraining
from videofirst.hub.cards import hub_model_id
from videofirst.recipe import load_recipe

pytestmark = pytest.mark.slow  # a tiny pretraining run (about 25 s on 2 CPU cores)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("run_card")
    data = root / "data"
    write_tiny_data(data)
    run_dir = root / "run"
    pretraining.pretrain(load_recipe(DEMO, tiny_overrides(data, run_dir, **{"optim.max_steps": 2})))
    return run_dir, data


def logged_eval(run_dir: Path) -> dict[str, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = [record for record in records if any(key.startswith("eval/") for key in record)][-1]
    return {key[5:]: value for key, value in last.items() if key.startswith("eval/") and "chance" not in key}


def test_the_runs_export_carries_its_evaluation(run):
    run_dir, _ = run
    card = ModelCard.load(run_dir / "export" / "README.md")
    assert "No evaluation results were recorded" not in card.text
    assert "No training record was exported" not in card.text
    found = {result.metric_type: result.metric_value for result in card.data.eval_results}
    assert found == pytest.approx(logged_eval(run_dir))
    assert {result.dataset_name for result in card.data.eval_results} == {
        "Held-out set of the training run (test.jsonl)"
    }


def test_an_evaluation_given_again_is_listed_once(run, tmp_path):
    run_dir, data = run
    # training/evaluate.py on the run's export and held-out manifest: the run's final evaluation, recomputed.
    record = {
        "task": "retrieval",
        "checkpoint": str(run_dir / "export"),
        "manifest": str(data / "test.jsonl"),
        "metrics": {"t2v_recall@1": 0.75, "v2t_recall@1": 0.5},
    }
    (tmp_path / "eval.json").write_text(json.dumps(record))
    spec = importlib.util.spec_from_file_location("training_export", REPO / "training" / "export.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(run_dir), str(tmp_path / "out"), "--results", str(tmp_path / "eval.json")]) == 0
    results = ModelCard.load(tmp_path / "out" / "README.md").data.eval_results
    by_dataset = {}
    for result in results:
        by_dataset.setdefault(result.dataset_name, {})[result.metric_type] = result.metric_value
    assert by_dataset == {"Held-out set of the training run (test.jsonl)": record["metrics"]}

    # Another held-out set is another evaluation: both are listed.
    other = {**record, "manifest": str(tmp_path / "msrvtt.jsonl")}
    (tmp_path / "msrvtt.jsonl").write_text("")
    (tmp_path / "eval_other.json").write_text(json.dumps(other))
    argv = [str(run_dir), str(tmp_path / "out2"), "--results", str(tmp_path / "eval_other.json")]
    assert script.main(argv) == 0
    names = {result.dataset_name for result in ModelCard.load(tmp_path / "out2" / "README.md").data.eval_results}
    assert names == {"msrvtt", "Held-out set of the training run (test.jsonl)"}


def test_base_model_is_a_hub_id_never_a_local_path(tmp_path):
    assert hub_model_id("openai/clip-vit-base-patch16") == "openai/clip-vit-base-patch16"
    (tmp_path / "runs" / "short").mkdir(parents=True)
    assert hub_model_id(str(tmp_path / "runs" / "short")) is None
    assert hub_model_id("runs") is None and hub_model_id(None) is None
