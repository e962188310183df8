"""Pinned downloads: a raw GitHub file at a fixed commit, sha256-checked before it lands.

``data.source: download`` fetches the MiniOneRec files (``tsrec.data.minionerec``) and the TS-Rec authors' keyword files
(``tsrec.semantics.teaching``, teacher ``authors``) this way. ``$TSREC_DOWNLOAD_BASE`` serves GitHub's raw files from
another address (a proxy or a copy of the same tree; the tests use a loopback server).
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.request
from pathlib import Path

from tsrec.core.errors import TsrecError
from tsrec.core.io import atomic_file, sha256_file

log = logging.getLogger(__name__)

GITHUB_RAW = "https://raw.githubusercontent.com"
BASE_ENV = "TSREC_DOWNLOAD_BASE"
# the TS-Rec authors' keyword files (teacher ``authors``)
AUTHORS_REPOSITORY = "github.com/jiaweif3ng/TS-Rec-Review"
AUTHORS_COMMIT = "e2b938db575161666fea7a12ca691383f9010685"
AUTHORS_URL_PATTERN = GITHUB_RAW + "/jiaweif3ng/TS-Rec-Review/{commit}/data/Amazon/semantics/{name}"
AUTHORS_SHA256 = {  # file under data/Amazon/semantics/ at AUTHORS_COMMIT -> sha256 (= the data mirror's SHA256SUMS)
    "Industrial_and_Scientific.description_keywords.json":
        "0085864e4b66834601a7fd674393c505cb01243ce046c1f94a1323ae9781ca27",
}


def download_url(url: str) -> str:
    """``url`` with ``$TSREC_DOWNLOAD_BASE`` in place of https://raw.githubusercontent.com, where set."""
    base = os.environ.get(BASE_ENV)
    if base and url.startswith(GITHUB_RAW):
        return base.rstrip("/") + url[len(GITHUB_RAW):]
    return url


def download_verified(url: str, dest: Path, expected: str, timeout_s: float) -> Path:
    """``dest``, downloaded from ``url`` unless it already holds the pinned bytes. The sha256 is checked before the
    file lands, so a failed or wrong download leaves nothing behind. An unreachable URL raises TsrecError whose
    ``__cause__`` is the OSError."""
    dest = Path(dest)
    if dest.is_file() and sha256_file(dest) == expected:
        return dest
    url = download_url(url)
    log.info("downloading %s", url)
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            payload = resp.read()
    except OSError as exc:
        raise TsrecError(f"download failed: {exc}", file=url) from exc
    got = hashlib.sha256(payload).hexdigest()
    if got != expected:
        raise TsrecError(f"sha256 mismatch: expected {expected}, got {got}", file=url)
    with atomic_file(dest, "wb") as out:
        out.write(payload)
    return dest
