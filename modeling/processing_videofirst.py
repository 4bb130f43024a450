"""The VideoFirst processor: one object that prepares videos, images and captions for a VideoFirst model.

```python
processor = VideoFirstProcessor(video_processor=VideoFirstVideoProcessor(), tokenizer=bert_tokenizer)
batch = processor(videos=["a.mp4", "b.mp4"], text=["a dog", "a cat"], fps=1.0, num_frames=256,
                  return_tensors="pt", padding=True)
# batch: pixel_values_videos (B, T, C, H, W), video_frame_mask (B, T), input_ids, attention_mask
```

Video keyword arguments (`fps`, `num_frames`, `sampling`, `start`, `end`, `offset`, `size`, ...) go to
`VideoFirstVideoProcessor`, text ones (`padding`, `max_length`, `truncation`, `pad_to_multiple_of`, ...) to the
tokenizer, with the values tokenizers take (`padding=True` / `"longest"`, `"max_length"`, `False`). Images are
processed by the video processor as single frames (same resize, crop and normalisation) into `pixel_values`.

Text defaults: `padding=True`, `truncation=True` and no `token_type_ids` (the model takes `input_ids` and
`attention_mask`). Truncation stops at `max_length`, by default the tokenizer's `model_max_length`, which an
exported checkpoint sets to the text tower's `max_position_embeddings`: a caption longer than the text tower can
read is cut rather than crashing the model. Pass `truncation=False` to get the full token sequence.
"""

from transformers.image_processing_utils import BatchFeature
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, Unpack

from .video_processing_videofirst import VideoFirstVideoProcessor, VideoFirstVideoProcessorKwargs

__all__ = ["VideoFirstProcessor"]


class VideoFirstProcessorKwargs(ProcessingKwargs, total=False):
    videos_kwargs: VideoFirstVideoProcessorKwargs


class VideoFirstProcessor(ProcessorMixin):
    r"""Combines a [`VideoFirstVideoProcessor`] and a tokenizer.

    Args:
        video_processor ([`VideoFirstVideoProcessor`]): prepares videos (and images).
        tokenizer ([`PreTrainedTokenizerBase`]): tokenizes captions, e.g. a BERT tokenizer.
    """

    valid_processor_kwargs = VideoFirstProcessorKwargs
    text_kwargs = {"padding": True, "truncation": True, "return_token_type_ids": False}

    def __init__(self, video_processor=None, tokenizer=None, **kwargs):
        super().__init__(video_processor, tokenizer, **kwargs)

    def __call__(self, images=None, text=None, videos=None, audio=None, **kwargs: Unpack[VideoFirstProcessorKwargs]):
        """Prepares any of `videos`, `images` and `text`.

        Returns:
            [`BatchFeature`] with `pixel_values_videos` and `video_frame_mask` (videos), `pixel_values`
            (images), `input_ids` and `attention_mask` (text), and `video_metadata` when
            `return_metadata=True`.
        """
        if audio is not None:
            raise ValueError(f"{type(self).__name__} does not process audio")
        if images is None and text is None and videos is None:
            raise ValueError(f"{type(self).__name__} needs at least one of videos, images or text")
        merged = self._merge_kwargs(
            VideoFirstProcessorKwargs,
            tokenizer_init_kwargs=self.tokenizer.init_kwargs if self.tokenizer is not None else {},
            **kwargs,
        )
        return_tensors = merged["videos_kwargs"].get("return_tensors", merged["text_kwargs"].get("return_tensors"))
        data = {}
        if videos is not None:
            data.update(self.video_processor(videos, **merged["videos_kwargs"]))
        if images is not None:
            data.update(self.video_processor.preprocess_images(images, **merged["images_kwargs"]))
        if text is not None:
            data.update(self.tokenizer(text, **merged["text_kwargs"]))
        return BatchFeature(data=data, tensor_type=return_tensors, skip_tensor_conversion=["video_metadata"])

    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        # Load the video processor with its own class rather than through AutoVideoProcessor, so that loading
        # works whether or not the class is registered (plain install, or remote code shipped with a
        # checkpoint).
        subfolder = kwargs.pop("subfolder", "")
        video_processor = VideoFirstVideoProcessor.from_pretrained(
            pretrained_model_name_or_path, subfolder=subfolder, **kwargs
        )
        tokenizer = cls._load_tokenizer_from_pretrained(
            "tokenizer", pretrained_model_name_or_path, subfolder=subfolder, **kwargs
        )
        return [video_processor, tokenizer]

    @property
    def model_input_names(self):
        names = list(self.video_processor.model_input_names) + ["pixel_values"]
        names += [name for name in self.tokenizer.model_input_names if name != "token_type_ids"]
        return names
