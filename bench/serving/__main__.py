"""``python -m bench.serving``: run the serving benchmark.

BLAS gets one thread before numpy loads, because the in-process compute figures use the production
settings.
"""

import os
import sys

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from bench.serving.runner import main  # noqa: E402

sys.exit(main())
