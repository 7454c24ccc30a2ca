"""Training: features, the TFRS two-tower model, the training job, artefacts and publishing.

Run the job with ``python -m pipelines.training``.
"""
