"""Training: features, the TFRS two-tower model, the training job (``python -m pipelines.training``), artefacts and publishing."""
