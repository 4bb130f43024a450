"""Ranking metrics against hand-computed cases (ties, several captions per video) and the `evaluate` modules."""

import socket

import numpy as np
import pytest
import torch

from videofirst.evaluation import metrics as metrics_module
from videofirst.evaluation.metrics import (
    classification_metrics,
    multiple_choice_metrics,
    rank_metrics,
    retrieval_metrics,
)
from videofirst.metrics import METRICS, metric_path

# Four captions of three captioned videos (V0 has two captions), plus V3 with no caption.
#                      V0    V1    V2    V3
HAND_SIMILARITY = [
    [0.90, 0.10, 0.20, 0.00],  # t0 -> V0: first                                      t2v rank 1
    [0.90, 0.50, 0.10, 0.95],  # t1 -> V0: the uncaptioned V3 scores higher             t2v rank 2
    [0.30, 0.40, 0.40, 0.10],  # t2 -> V1: tied with V2, pessimistic                    t2v rank 2
    [0.20, 0.10, 0.40, 0.30],  # t3 -> V2: first                                      t2v rank 1
]
HAND_VIDEO_IDS = [0, 0, 1, 2]
# v2t: V0's captions tie at 0.9 and outrank every other caption (rank 1: its own captions never count against it);
# V1's caption (0.4) is beaten by t1 (0.5): rank 2; V2's caption (0.4) ties with t2 (0.4): rank 2; V3 is skipped.
HAND_EXPECTED = {
    "t2v_recall@1": 0.5,
    "t2v_recall@5": 1.0,
    "t2v_recall@10": 1.0,
    "t2v_median_rank": 1.5,  # ranks 1, 1, 2, 2: even count, mean of the middle two
    "t2v_mean_rank": 1.5,
    "v2t_recall@1": 1 / 3,
    "v2t_recall@5": 1.0,
    "v2t_recall@10": 1.0,
    "v2t_median_rank": 2.0,
    "v2t_mean_rank": 5 / 3,
}


def brute_force_ranks(similarity: np.ndarray, video_ids: list[int]) -> tuple[list[int], list[int]]:
    """Loop-by-loop reference of the documented convention."""
    t2v = []
    for text, video in enumerate(video_ids):
        target = similarity[text, video]
        t2v.append(1 + sum(similarity[text, other] >= target for other in range(similarity.shape[1]) if other != video))
    v2t = []
    for video in range(similarity.shape[1]):
        captions = [text for text, owner in enumerate(video_ids) if owner == video]
        if not captions:
            continue
        best = max(similarity[text, video] for text in captions)
        others = [text for text in range(similarity.shape[0]) if text not in captions]
        v2t.append(1 + sum(similarity[text, video] >= best for text in others))
    return t2v, v2t


def test_retrieval_hand_computed_with_ties_and_several_captions():
    metrics = retrieval_metrics(HAND_SIMILARITY, HAND_VIDEO_IDS)
    assert metrics.keys() == HAND_EXPECTED.keys()
    for key, value in HAND_EXPECTED.items():
        assert metrics[key] == pytest.approx(value), key


def test_retrieval_accepts_tensors_arrays_and_lists_alike():
    from_tensor = retrieval_metrics(torch.tensor(HAND_SIMILARITY), torch.tensor(HAND_VIDEO_IDS))
    from_array = retrieval_metrics(np.array(HAND_SIMILARITY, dtype=np.float32), np.array(HAND_VIDEO_IDS))
    assert from_tensor == pytest.approx(HAND_EXPECTED) and from_array == pytest.approx(HAND_EXPECTED)


def test_all_equal_scores_get_the_worst_rank():
    metrics = retrieval_metrics(torch.zeros(5, 5), list(range(5)), recall_at=(1, 4, 5))
    assert metrics["t2v_recall@1"] == 0.0 and metrics["t2v_recall@4"] == 0.0 and metrics["t2v_recall@5"] == 1.0
    assert metrics["t2v_median_rank"] == 5.0 and metrics["v2t_mean_rank"] == 5.0


@pytest.mark.parametrize("seed", [0, 1])
def test_retrieval_matches_brute_force_reference(seed, monkeypatch):
    generator = np.random.default_rng(seed)
    # Coarse scores make ties frequent; 9 captions of 5 videos, one video without a caption.
    similarity = generator.integers(0, 4, size=(9, 6)).astype(np.float64)
    video_ids = [0, 0, 1, 2, 2, 2, 3, 4, 4]
    t2v, v2t = brute_force_ranks(similarity, video_ids)
    expected = {**rank_metrics(t2v, (1, 2, 3), "t2v_"), **rank_metrics(v2t, (1, 2, 3), "v2t_")}
    assert retrieval_metrics(similarity, video_ids, recall_at=(1, 2, 3)) == pytest.approx(expected)
    monkeypatch.setattr(metrics_module, "_CHUNK_ENTRIES", 7)  # one or two rows per chunk: same answer
    assert retrieval_metrics(similarity, video_ids, recall_at=(1, 2, 3)) == pytest.approx(expected)


def test_rank_metrics_median_and_mean():
    assert rank_metrics([4, 1, 3, 2], recall_at=(2,)) == {"recall@2": 0.5, "median_rank": 2.5, "mean_rank": 2.5}
    assert rank_metrics([7, 1, 2], recall_at=())["median_rank"] == 2.0


def test_multiple_choice_hand_computed():
    scores = [
        [0.1, 0.9, 0.2, 0.3, 0.0],  # answer 1, clear winner: correct
        [0.5, 0.5, 0.1, 0.2, 0.3],  # answer 0 tied with option 1: pessimistic miss
        [0.1, 0.2, 0.3, 0.4, 0.5],  # answer 2, option 4 wins: miss
        [0.0, 0.0, 0.0, 0.0, 0.0],  # all tied: miss
    ]
    assert multiple_choice_metrics(scores, [1, 0, 2, 3]) == {"accuracy": 0.25}


def test_classification_hand_computed():
    scores = [
        [0.9, 0.1, 0.2, 0.3, 0.0, 0.1],  # label 0: rank 1
        [0.5, 0.5, 0.5, 0.1, 0.1, 0.1],  # label 2 tied with two classes: rank 3
        [0.6, 0.5, 0.4, 0.3, 0.2, 0.2],  # label 5 tied with class 4 for last: rank 6
    ]
    metrics = classification_metrics(scores, [0, 2, 5], top_k=(1, 3, 5, 6))
    assert metrics == pytest.approx(
        {"top1_accuracy": 1 / 3, "top3_accuracy": 2 / 3, "top5_accuracy": 2 / 3, "top6_accuracy": 1.0}
    )
    assert classification_metrics(scores, [0, 2, 5]).keys() == {"top1_accuracy", "top5_accuracy"}


@pytest.mark.parametrize(
    ("scores", "targets", "message"),
    [
        ([[0.1, float("nan")]], [0], "NaN"),
        ([[0.1, 0.2]], [2], r"\[0, 2\)"),
        ([[0.1, 0.2]], [0, 1], "one per"),
        ([[0.1, 0.2], [0.3]], [0, 0], "rectangular"),
        ([0.1, 0.2], [0], "2D"),
    ],
)
def test_invalid_inputs_fail_clearly(scores, targets, message):
    with pytest.raises(ValueError, match=message):
        multiple_choice_metrics(scores, targets)


# ---------------------------------------------------------------------------------------------------------------
# evaluate modules
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def offline(monkeypatch):
    """Loading a local module must not reach the network: any connection attempt fails the test."""
    import evaluate

    def refuse(*args, **kwargs):
        raise AssertionError("evaluate tried to open a network connection")

    monkeypatch.setattr(evaluate.config, "HF_EVALUATE_OFFLINE", True)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    return evaluate


CASES = {
    "video_text_retrieval": (HAND_SIMILARITY, HAND_VIDEO_IDS, {}, HAND_EXPECTED),
    "multiple_choice_qa": ([[0.1, 0.9, 0.2, 0.3, 0.0], [0.5, 0.5, 0.1, 0.2, 0.3]], [1, 0], {}, {"accuracy": 0.5}),
    "zero_shot_classification": (
        [[0.9, 0.1, 0.2], [0.5, 0.5, 0.1]],
        [0, 1],
        {"top_k": (1, 2)},
        {"top1_accuracy": 0.5, "top2_accuracy": 1.0},
    ),
    "video_captioning": (
        ["a red circle", "a red circle"],
        [["a red circle", "a square"], ["a red square circle"]],
        {"cider": False},
        {"rougeL": (1.0 + 2 * 0.75 / 1.75) / 2},
    ),
    "event_sequence": (
        ["a blue square, then a red circle", "a red circle, then a blue square"],
        ["a red circle, then a blue square", "a red circle, then a green cross"],
        {},
        {
            "event_sequence_accuracy": 0.0,
            "event_position_accuracy": 0.25,
            "event_set_accuracy": 0.5,
            "colour_position_accuracy": 0.25,
            "colour_sequence_accuracy": 0.0,
        },
    ),
}


@pytest.mark.parametrize("name", sorted(METRICS))
def test_evaluate_load_from_package_path(name, offline, tmp_path):
    path = metric_path(name)
    assert path.endswith(f"videofirst/metrics/{name}.py")
    metric = offline.load(path, cache_dir=str(tmp_path))
    assert type(metric).__name__ == METRICS[name]
    predictions, references, kwargs, expected = CASES[name]
    assert metric.compute(predictions=predictions, references=references, **kwargs) == pytest.approx(expected)


def test_evaluate_module_accumulates_batches_and_matches_the_function(offline, tmp_path):
    from videofirst.metrics import load

    metric = load("video_text_retrieval", cache_dir=str(tmp_path))
    similarity = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    video_ids = torch.tensor([0, 1, 1, 2, 3, 4, 4])
    metric.add_batch(predictions=similarity[:3], references=video_ids[:3])
    metric.add_batch(predictions=similarity[3:].numpy(), references=video_ids[3:].tolist())
    assert metric.compute(recall_at=(1, 2)) == retrieval_metrics(similarity, video_ids, recall_at=(1, 2))


def test_metric_classes_are_usable_directly():
    from videofirst.metrics import MultipleChoiceQA, VideoTextRetrieval, ZeroShotClassification

    for cls, name in [
        (VideoTextRetrieval, "video_text_retrieval"),
        (MultipleChoiceQA, "multiple_choice_qa"),
        (ZeroShotClassification, "zero_shot_classification"),
    ]:
        predictions, references, kwargs, expected = CASES[name]
        result = cls(keep_in_memory=True).compute(predictions=predictions, references=references, **kwargs)
        assert result == pytest.approx(expected)
    with pytest.raises(ValueError, match="Unknown metric"):
        metric_path("bleu")
