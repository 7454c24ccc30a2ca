"""Flex Template entry point: the Dataflow launcher runs this file with the job's parameters.

The launcher passes every template parameter as ``--<name>=<value>``. Template parameter
names use underscores (``events_subscription``), while ``pipelines.streaming.pipeline`` spells its
own flags with dashes (``--events-subscription``); Beam's options keep their underscores.
:func:`normalize_flags` bridges the two, then ``pipelines.streaming.pipeline.run`` takes over. The
pipeline package is installed in the image (docker/pipeline.Dockerfile).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Sequence


def normalize_flags(argv: Sequence[str], beam_options: Iterable[str]) -> list[str]:
    """Rewrite ``--a_b[=v]`` as ``--a-b[=v]`` unless ``a_b`` is one of Beam's pipeline options."""
    beam = set(beam_options)
    out = []
    for arg in argv:
        if arg.startswith("--") and "_" in arg.split("=", 1)[0]:
            name, sep, value = arg[2:].partition("=")
            if name not in beam:
                arg = f"--{name.replace('_', '-')}{sep}{value}"
        out.append(arg)
    return out


def main(argv: Sequence[str]) -> None:
    """Run the streaming pipeline with the launcher's arguments."""
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines.streaming import pipeline as streaming

    beam_options = PipelineOptions([]).get_all_options(drop_default=False).keys()
    # The package is installed in the image, so the main session need not be pickled.
    streaming.run(normalize_flags(argv, beam_options), save_main_session=False)


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    main(sys.argv[1:])
