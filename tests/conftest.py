import os
from pathlib import Path

# the params' repro.cpu_capability (tsrec.core.pinning): in-process runs must use the kernels the CLI pins, and
# torch reads this once, at import
os.environ.setdefault("ATEN_CPU_CAPABILITY", "avx2")  # lower case: torch ignores "AVX2"

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
    from tsrec.data.synthetic import make_dataset

    return make_dataset(tmp_path / "tiny")


@pytest.fixture(scope="session")
def tiny_backbone(tmp_path_factory):
    """A random 2-layer llama + real BPE tokenizer, in the backbone stage's folder layout."""
    from tsrec.lm.tiny import make_tiny_backbone

    return make_tiny_backbone(tmp_path_factory.mktemp("backbone"))
