"""transformers' own common model tests (`ModelTesterMixin`, vendored from transformers 5.25.0, see
`transformers_common/README.md`) run against `VideoFirstVisionModel` and `VideoFirstModel`.

Every skip names why the test does not apply to this model, as transformers' own model test files do.
"""

import unittest

import pytest
import torch
import transformers
from tiny_models import TINY_TEXT_CONFIG, tiny_vision_config

from videofirst import VideoFirstConfig, VideoFirstModel, VideoFirstVisionConfig, VideoFirstVisionModel

VENDORED_VERSION = "5.25.0"
if transformers.__version__ != VENDORED_VERSION:
    pytest.skip(
        f"the common tests are vendored from transformers {VENDORED_VERSION} and transformers "
        f"{transformers.__version__} is installed: vendor that version's tests (transformers_common/README.md)",
        allow_module_level=True,
    )

from transformers_common.test_modeling_common import (  # noqa: E402
    ModelTesterMixin,
    floats_tensor,
    ids_tensor,
    random_attention_mask,
)


class VideoFirstVisionModelTester:
    def __init__(self, parent, batch_size: int = 2, num_frames: int = 4, image_size: int = 32, is_training=True):
        self.parent = parent
        self.batch_size = batch_size
        self.num_frames = num_frames
        self.image_size = image_size
        self.is_training = is_training
        config = self.get_config()
        self.hidden_size = config.hidden_size
        self.num_hidden_layers = config.num_hidden_layers
        self.num_attention_heads = config.num_attention_heads
        # 2 tubelet steps x 4 x 4 patches of a 4-frame 32x32 video.
        self.seq_length = (num_frames // 2) * (image_size // 8) ** 2

    def get_config(self) -> VideoFirstVisionConfig:
        return VideoFirstVisionConfig(**tiny_vision_config(num_frames=self.num_frames, image_size=self.image_size))

    def prepare_config_and_inputs(self):
        shape = [self.batch_size, self.num_frames, 3, self.image_size, self.image_size]
        return self.get_config(), floats_tensor(shape)

    def create_and_check_model(self, config, pixel_values_videos):
        model = VideoFirstVisionModel(config).eval()
        with torch.no_grad():
            result = model(pixel_values_videos=pixel_values_videos)
        shape = (self.batch_size, self.seq_length, self.hidden_size)
        self.parent.assertEqual(result.last_hidden_state.shape, shape)
        self.parent.assertEqual(result.pooler_output.shape, (self.batch_size, self.hidden_size))

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values_videos = self.prepare_config_and_inputs()
        return config, {"pixel_values_videos": pixel_values_videos}


class VideoFirstVisionModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (VideoFirstVisionModel,)
    test_resize_embeddings = False
    test_torch_exportable = False  # the export tests are not vendored (transformers_common/README.md)
    # The test dates models by a copyright line our files do not carry; run it (it checks `_init_weights`).
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        self.model_tester = VideoFirstVisionModelTester(self)

    def test_model(self):
        self.model_tester.create_and_check_model(*self.model_tester.prepare_config_and_inputs())

    def test_model_get_set_embeddings(self):
        # The input embedding of a video tower is its tubelet kernel (a Conv3d, as CLIP's vision tower returns its
        # Conv2d patch embedding), not an `nn.Embedding`; there is no output embedding.
        config, _ = self.model_tester.prepare_config_and_inputs_for_common()
        model = VideoFirstVisionModel(config)
        self.assertIs(model.get_input_embeddings(), model.embeddings.tubelet_embedding)
        self.assertIsNone(model.get_output_embeddings())

    # A bare encoder has no loss to train on (transformers skips its base models here through MODEL_MAPPING_NAMES,
    # which a remote-code model is not in); VideoFirstModelTest runs these tests through this tower.
    @unittest.skip(reason="VideoFirstVisionModel is a bare encoder without a loss; VideoFirstModelTest trains it")
    def test_training(self):
        pass

    @unittest.skip(reason="VideoFirstVisionModel is a bare encoder without a loss; VideoFirstModelTest trains it")
    def test_training_gradient_checkpointing(self):
        pass

    @unittest.skip(reason="VideoFirstVisionModel is a bare encoder without a loss; VideoFirstModelTest trains it")
    def test_training_gradient_checkpointing_use_reentrant_false(self):
        pass

    @unittest.skip(reason="VideoFirstVisionModel is a bare encoder without a loss; VideoFirstModelTest trains it")
    def test_training_gradient_checkpointing_use_reentrant_true(self):
        pass


class VideoFirstTextInputsTester:
    """The text inputs of `get_text_features` (the tower is a tiny BERT, tested by transformers' BERT tests)."""

    def __init__(self, batch_size: int, text_length: int):
        self.batch_size = batch_size
        self.text_length = text_length
        self.num_hidden_layers = TINY_TEXT_CONFIG["num_hidden_layers"]

    def prepare_config_and_inputs_for_common(self):
        input_ids = ids_tensor([self.batch_size, self.text_length], TINY_TEXT_CONFIG["vocab_size"])
        return None, {"input_ids": input_ids, "attention_mask": random_attention_mask(input_ids.shape)}


class VideoFirstImageInputsTester:
    """The image inputs of `get_image_features`: frames embedded by the tower's 2D patch kernel."""

    def __init__(self, batch_size: int, image_size: int, num_hidden_layers: int):
        self.batch_size = batch_size
        self.image_size = image_size
        self.num_hidden_layers = num_hidden_layers

    def prepare_config_and_inputs_for_common(self):
        return None, {"pixel_values": floats_tensor([self.batch_size, 3, self.image_size, self.image_size])}


class VideoFirstModelTester:
    def __init__(self, parent, batch_size: int = 2, text_length: int = 7, is_training=True):
        self.parent = parent
        self.batch_size = batch_size
        self.text_length = text_length
        self.is_training = is_training
        self.video_model_tester = VideoFirstVisionModelTester(parent, batch_size=batch_size)
        self.vision_model_tester = VideoFirstImageInputsTester(
            batch_size, self.video_model_tester.image_size, self.video_model_tester.num_hidden_layers
        )
        self.text_model_tester = VideoFirstTextInputsTester(batch_size, text_length)

    def get_config(self) -> VideoFirstConfig:
        return VideoFirstConfig(
            vision_config=self.video_model_tester.get_config().to_dict(),
            text_config=dict(TINY_TEXT_CONFIG),
            projection_dim=16,
        )

    def prepare_config_and_inputs(self):
        _, pixel_values_videos = self.video_model_tester.prepare_config_and_inputs()
        _, text = self.text_model_tester.prepare_config_and_inputs_for_common()
        return self.get_config(), pixel_values_videos, text["input_ids"], text["attention_mask"]

    def prepare_config_and_inputs_for_common(self):
        config, pixel_values_videos, input_ids, attention_mask = self.prepare_config_and_inputs()
        inputs = {
            "pixel_values_videos": pixel_values_videos,
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "return_loss": True,
        }
        return config, inputs


class VideoFirstModelTest(ModelTesterMixin, unittest.TestCase):
    all_model_classes = (VideoFirstModel,)
    test_resize_embeddings = False
    test_torch_exportable = False  # the export tests are not vendored (transformers_common/README.md)
    # The test dates models by a copyright line our files do not carry; run it (it checks `_init_weights`).
    test_can_init_all_missing_weights_before_2023 = True
    _is_composite = True
    # The eager/SDPA comparison feeds the main input (videos) plus these.
    additional_model_inputs = ["input_ids"]
    # The 2D patch kernel embeds images only, so a video batch leaves it without a gradient (as unrouted experts of
    # a MoE); every other parameter's gradient is checked by test_modeling.py::test_every_parameter_gets_a_gradient.
    # Training runs freeze the kernel unless images co-train (`videofirst.apply_adaptation`).
    test_all_params_have_gradient = False

    def setUp(self):
        self.model_tester = VideoFirstModelTester(self)

    @unittest.skip(reason="Hidden states are tested in the towers' own tests (VideoFirstVisionModelTest, BERT's)")
    def test_hidden_states_output(self):
        pass

    @unittest.skip(reason="Attentions are tested in the towers' own tests (VideoFirstVisionModelTest, BERT's)")
    def test_attention_outputs(self):
        pass

    @unittest.skip(reason="Retain_grad is tested in the towers' own tests (VideoFirstVisionModelTest, BERT's)")
    def test_retain_grad_hidden_states_attentions(self):
        pass

    def test_model(self):
        config, pixel_values_videos, input_ids, attention_mask = self.model_tester.prepare_config_and_inputs()
        model = VideoFirstModel(config).eval()
        with torch.no_grad():
            result = model(pixel_values_videos=pixel_values_videos, input_ids=input_ids, attention_mask=attention_mask)
        batch_size = self.model_tester.batch_size
        self.assertEqual(result.logits_per_video.shape, (batch_size, batch_size))
        self.assertEqual(result.logits_per_text.shape, (batch_size, batch_size))
