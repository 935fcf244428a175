"""decoder: a from-scratch GPT-2-style language model and the harness to train, measure and deploy it."""

__version__ = "0.1.0"
