"""Packaging for the real-time recommender.

`pip install -e .[all]` gives a developer everything; Dataflow workers receive this
package through `--setup_file ./setup.py` and install `install_requires` plus the
`pipeline` extra (Beam itself is already in the worker image).
Versions are pinned in requirements/constraints.txt (pip install -c ...).
"""

import setuptools

CORE = [
    "fastavro==1.13.1",
    "faiss-cpu>=1.15,<1.16",  # scoring.ann: the served approximate index
    "numpy>=2.0,<2.5",
    "google-cloud-pubsub==2.44.0",
    "google-cloud-firestore==2.34.1",
    "google-cloud-storage>=2.18,<4",
    "google-api-core>=2.20,<3",
]
PIPELINE = [
    "apache-beam[gcp]==2.77.0",
    "tensorflow-cpu==2.21.0",
    "tf-keras==2.21.0",
    "tensorflow-recommenders==0.7.7",
    "tensorflow-hub==0.16.1",
]
TRAIN = PIPELINE + [
    "implicit==0.7.3",
    "threadpoolctl>=3.5",
    "scipy>=1.13",
    "matplotlib==3.11.2",
    "tqdm==4.70.1",
]
FUNCTIONS = [
    "functions-framework==3.10.2",
]
DEV = [
    "pytest==9.2.0",
    "pytest-timeout==2.4.0",
    "schemathesis==4.32.5",
    "python-hcl2==8.1.4",
    "ruff==0.17.6",
    "requests>=2.32",
    "websockets>=13",  # the console's browser test drives headless Chromium over CDP
]

FUNCTION_PACKAGES = ["recommender", "recommender.compat", "httpfn"]

setuptools.setup(
    name="realtime-recommender",
    version="0.1.0",
    description="Real-time recommendations on Google Cloud: Pub/Sub, Beam, TFRS, Firestore, "
                "Cloud Functions.",
    python_requires=">=3.10",
    packages=setuptools.find_packages(include=["schemas", "schemas.*", "scoring", "scoring.*", "pipelines",
                                               "pipelines.*", "scripts", "scripts.*", "bench", "bench.*",
                                               "testing", "testing.*"])
    + FUNCTION_PACKAGES,
    # The functions' own packages live in their function folders (each deploys from its folder,
    # with these copied next to main.py); installed here so the repository imports them by name.
    package_dir={"recommender": "functions/recommend/recommender", "httpfn": "functions/httpfn"},
    package_data={"schemas": ["*.avsc"]},
    install_requires=CORE,
    extras_require={
        "pipeline": PIPELINE,
        "train": TRAIN,
        "functions": FUNCTIONS,
        "dev": DEV,
        "all": sorted(set(TRAIN + FUNCTIONS + DEV)),
    },
)
