# One image for the streaming pipeline's Flex Template launcher, its Dataflow workers
# (passed as sdk_container_image) and the training Cloud Run job.
# Built from the repository root by scripts/stage_pipeline.sh (Cloud Build, docker/cloudbuild.yaml).
#
# The Beam SDK image provides the worker boot entrypoint; the launcher binary copied from
# Google's template base image makes the same image usable as a Flex Template. TensorFlow and
# this repository's package are installed once here, so workers do not pip-install at start-up.

ARG BEAM_VERSION=2.77.0
ARG LAUNCHER_IMAGE=gcr.io/dataflow-templates-base/python311-template-launcher-base:latest

FROM ${LAUNCHER_IMAGE} AS launcher

FROM apache/beam_python3.11_sdk:${BEAM_VERSION}

WORKDIR /opt/recsys
COPY requirements/constraints.txt requirements/constraints.txt
COPY setup.py ./
COPY schemas schemas
COPY pipelines pipelines
RUN pip install --no-cache-dir -c requirements/constraints.txt ".[train]" \
    && python -c "import pipelines, schemas, apache_beam, tensorflow_recommenders"

COPY --from=launcher /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher
COPY docker/flex_main.py /template/main.py

ENV FLEX_TEMPLATE_PYTHON_PY_FILE=/template/main.py \
    TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PYTHONUNBUFFERED=1

# The entrypoint stays the Beam SDK's /opt/apache/beam/boot (workers); Dataflow starts the
# launcher binary itself, and the training job overrides the command (python -m pipelines.training).
