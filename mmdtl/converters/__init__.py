"""Checkpoint converters (released ViT ``.npz``, Swin, the official DTL code) as
functions; ``tools/model_converters/`` only parses arguments."""
