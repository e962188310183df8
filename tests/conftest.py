import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("TSREC_MIRROR") or REPO.parent / "shared" / "datasets")


@pytest.fixture(scope="session")
def mirror() -> Path:
    if not (MIRROR / "SHA256SUMS").is_file():
        pytest.skip(f"dataset mirror not found at {MIRROR} (set TSREC_MIRROR)")
    return MIRROR


@pytest.fixture()
def tiny_dataset(tmp_path):
    from tsrec.synthetic import make_dataset

    return make_dataset(tmp_path / "tiny")
