"""Real-time recommender: data, model, training, evaluation and the streaming pipeline.

TensorRecommenders needs Keras 2 (``tf-keras``); the switch must be set before anything
imports TensorFlow, so it is set here, at the top of the package.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
