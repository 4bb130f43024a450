"""The VideoFirst model family as transformers classes.

This folder is shipped verbatim with every exported checkpoint as remote code, so its modules only
import the standard library, torch, torchvision, transformers, huggingface_hub and each other.
"""
