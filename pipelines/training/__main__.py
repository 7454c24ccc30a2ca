"""``python -m pipelines.training``: train (or warm-start) a model and optionally publish it."""

from pipelines.training.train import main

if __name__ == "__main__":
    main()
