"""``python -m pipelines.streaming``: run the streaming pipeline."""

import logging
import os

from pipelines.streaming.pipeline import run

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run()
    logging.shutdown()
    os._exit(0)  # the DirectRunner's executor threads are not daemons; the drain already finished
