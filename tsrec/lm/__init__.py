"""The pretrained language model: loading and SID tokens, tiny random backbones for tests, constrained beam search."""
