"""What Terraform deploys for recommend: functions/recommend/* at the root plus schemas/, scoring/
and functions/httpfn/ as httpfn/, importing nothing else from the repository."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IGNORE = shutil.ignore_patterns("__pycache__")


def test_recommend_archive_layout_imports_main_from_its_own_copies(tmp_path):
    for entry in (ROOT / "functions" / "recommend").iterdir():
        if entry.is_dir():
            shutil.copytree(entry, tmp_path / entry.name, ignore=IGNORE)
        else:
            shutil.copy(entry, tmp_path / entry.name)
    for package, source in (("schemas", ROOT / "schemas"), ("scoring", ROOT / "scoring"),
                            ("httpfn", ROOT / "functions" / "httpfn")):
        shutil.copytree(source, tmp_path / package, ignore=IGNORE)
    probe = ("import sys, main, recommender, httpfn, schemas, scoring; "
             "print(*(m.__file__ for m in (main, recommender, httpfn, schemas, scoring))); "
             "print(sorted(m for m in sys.modules "
             "             if m.split('.')[0] in ('pipelines', 'scripts', 'functions', 'tensorflow')))")
    env = {"PATH": "/usr/bin:/bin", "GOOGLE_CLOUD_PROJECT": "p", "REUSE_PORT": "0",
           "FIRESTORE_EMULATOR_HOST": "127.0.0.1:1", "FIRESTORE_TIMEOUT_SECONDS": "0.1"}
    out = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    files, repo_modules = out.stdout.splitlines()[-2:]
    assert all(f.startswith(str(tmp_path)) for f in files.split()), files
    assert repo_modules == "[]"
    pins = (tmp_path / "requirements.txt").read_text().split()
    assert {"functions-framework==3.10.2", "google-cloud-firestore==2.34.1", "numpy==2.4.6"} <= set(pins)
