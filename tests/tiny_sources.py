"""Tiny image-text source models (CLIP, SigLIP) and a CLIP tokenizer, for the conversion tests and the docs'
offline Hub stand-in."""

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer, SiglipConfig, SiglipModel

VISION = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "image_size": 32,
    "patch_size": 8,
}
TEXT = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "vocab_size": 64,
    "max_position_embeddings": 16,
}
EOS = 1  # end-of-text id of the tiny CLIP tokenizer below; CLIP pools the text at this token


def tiny_clip() -> CLIPModel:
    torch.manual_seed(0)
    text = {**TEXT, "eos_token_id": EOS, "bos_token_id": 0, "pad_token_id": EOS}
    return CLIPModel(CLIPConfig(vision_config=VISION, text_config=text, projection_dim=16)).eval()


def tiny_siglip() -> SiglipModel:
    torch.manual_seed(0)
    model = SiglipModel(SiglipConfig(vision_config=VISION, text_config=TEXT)).eval()
    with torch.no_grad():  # a trained SigLIP's temperature exceeds CLIP's clamp of 100
        model.logit_scale.fill_(4.8)
        model.logit_bias.fill_(-12.0)
    return model


def tiny_clip_tokenizer() -> CLIPTokenizer:
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": EOS}
    for letter in "abcdefghijklmnopqrstuvwxyz":
        vocab[letter] = len(vocab)
        vocab[letter + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[])
