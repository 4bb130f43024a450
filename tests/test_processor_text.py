"""The processor's text side: truncation to what the text tower reads, padding as tokenizers take it, no warnings."""

import warnings

import pytest
import torch
from tiny_models import tiny_model
from transformers import BertTokenizerFast
from videofirst.modeling.processing_videofirst import VideoFirstProcessor
from videofirst.modeling.video_processing_videofirst import VideoFirstVideoProcessor

from videofirst.hub.export import export_checkpoint

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "dog", "runs", "cat", "the"]
LONG = " ".join(["a dog runs"] * 50)  # 152 tokens with [CLS] and [SEP]


@pytest.fixture
def processor(tmp_path) -> VideoFirstProcessor:
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(tmp_path / "vocab.txt"))  # model_max_length: "no limit" sentinel
    return VideoFirstProcessor(video_processor=VideoFirstVideoProcessor(num_frames=4), tokenizer=tokenizer)


def test_truncates_by_default_to_the_tokenizer_limit(processor):
    processor.tokenizer.model_max_length = 16
    batch = processor(text=[LONG, "a cat"], return_tensors="pt")
    assert batch["input_ids"].shape == (2, 16) and batch["input_ids"][0, -1] == processor.tokenizer.sep_token_id
    assert batch["attention_mask"][1].tolist() == [1] * 4 + [0] * 12
    assert "token_type_ids" not in batch
    assert processor(text=[LONG], truncation=False, return_tensors="pt")["input_ids"].shape == (1, 152)


def test_padding_options_as_tokenizers_take_them(processor):
    tokenizer = processor.tokenizer
    for options in (
        {"padding": "max_length", "max_length": 12},
        {"padding": "longest"},
        {"padding": False},
        {"padding": True, "pad_to_multiple_of": 8},
        {"max_length": 5},
    ):
        got = processor(text=["a dog runs", "a cat", LONG], **options)["input_ids"]
        expected = tokenizer(["a dog runs", "a cat", LONG], truncation=True, **options)["input_ids"]
        if "padding" not in options:  # the processor pads to the longest by default
            expected = tokenizer(["a dog runs", "a cat", LONG], truncation=True, padding=True, **options)["input_ids"]
        assert got == expected, options


def test_no_max_length_warning(processor):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        processor(text=["a dog", "a cat runs"], max_length=8, return_tensors="pt")
        processor(text=["a dog", "a cat runs"], return_tensors="pt")


def test_export_sets_the_text_towers_limit_and_the_model_reads_any_caption(processor, tmp_path):
    torch.manual_seed(0)
    model = tiny_model().eval()  # the text tower has 64 positions
    folder = export_checkpoint(model, processor, tmp_path / "export", card=False)
    assert processor.tokenizer.model_max_length > 64  # the caller's processor is left as it was
    reloaded = VideoFirstProcessor.from_pretrained(folder)
    assert reloaded.tokenizer.model_max_length == 64
    inputs = reloaded(text=[LONG * 3], return_tensors="pt")
    assert inputs["input_ids"].shape == (1, 64)
    with torch.no_grad():
        embeds = model.get_text_features(**inputs).pooler_output
    assert torch.isfinite(embeds).all()
