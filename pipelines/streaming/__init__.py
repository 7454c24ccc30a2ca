"""The streaming pipeline (``python -m pipelines.streaming``) and its transforms."""
