"""Downloads against a local HTTP server: checksums, re-use, resume, retries, errors; the recbole wheel."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest

from fixtures.data_fixtures import meta_item, serve, write_csv_gz, write_jsonl_gz
from r2ec.config import DataCfg
from r2ec.data import DataError, DownloadError, download



@pytest.fixture(autouse=True)
def _fast_retries(monkeypatch):
    monkeypatch.setattr(download, "BACKOFF_S", 0.0)
    monkeypatch.setattr(download, "TIMEOUT_S", 5)


@pytest.fixture()
def remote(tmp_path):
    """A fake Amazon 2023 host tree: rating-only CSV, raw reviews and metadata of Video_Games."""
    root = tmp_path / "remote"
    rows = [(f"U{i % 7}", f"B{i % 11:03d}", 5.0, 1_690_000_000_000 + i * 1000) for i in range(400)]
    write_csv_gz(root / "benchmark/5core/rating_only/Video_Games.csv.gz", rows)
    write_jsonl_gz(root / "raw/review_categories/Video_Games.jsonl.gz", [{"user_id": "U1"}])
    write_jsonl_gz(root / "raw/meta_categories/meta_Video_Games.jsonl.gz",
                   [meta_item(f"B{i:03d}", description=["x" * 50] * 3) for i in range(11)])
    return root


def _cfg(base: str, **kw) -> DataCfg:
    return dataclasses.replace(DataCfg(), base_url=base, **kw)


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_download_records_checksums_and_reuses(remote, tmp_path):
    dest = tmp_path / "raw"
    with serve(remote) as (base, state):
        inter, meta = download.download_amazon("Video_Games", _cfg(base), dest)
        assert inter == dest / "Video_Games.csv.gz" and meta == dest / "meta_Video_Games.jsonl.gz"
        assert inter.read_bytes() == (remote / "benchmark/5core/rating_only/Video_Games.csv.gz").read_bytes()
        rec = json.loads((dest / "checksums.json").read_text())
        assert rec[inter.name]["sha256"] == _sha(inter) and rec[meta.name]["sha256"] == _sha(meta)
        assert rec[inter.name]["url"].endswith("/benchmark/5core/rating_only/Video_Games.csv.gz")
        n = len(state.requests)
        assert n == 2
        download.download_amazon("Video_Games", _cfg(base), dest)  # both re-used: no request
        assert len(state.requests) == n
        inter.write_bytes(b"tampered")  # checksum mismatch: downloaded again
        download.download_amazon("Video_Games", _cfg(base), dest)
        assert [r["path"] for r in state.requests[n:]] == ["/benchmark/5core/rating_only/Video_Games.csv.gz"]
        assert gzip.decompress(inter.read_bytes()).startswith(b"user_id,parent_asin")
    assert not list(dest.glob("*.part*")) and not list(dest.glob(".*tmp*"))


def test_file_without_recorded_checksum_is_downloaded_again(remote, tmp_path):
    dest = tmp_path / "raw"
    dest.mkdir()
    (dest / "Video_Games.csv.gz").write_bytes(b"stale")
    with serve(remote) as (base, state):
        inter, _ = download.download_amazon("Video_Games", _cfg(base), dest)
    assert inter.read_bytes() != b"stale" and len(state.requests) == 2


def test_raw_reviews_url(remote, tmp_path):
    with serve(remote) as (base, state):
        inter, _ = download.download_amazon("Video_Games", _cfg(base, amazon_input="raw_reviews"), tmp_path / "r")
    assert inter.name == "Video_Games.jsonl.gz"
    assert state.requests[0]["path"] == "/raw/review_categories/Video_Games.jsonl.gz"


def test_resume_partial_file_with_range(remote, tmp_path):
    dest = tmp_path / "raw"
    dest.mkdir()
    src = remote / "raw/meta_categories/meta_Video_Games.jsonl.gz"
    data = src.read_bytes()
    etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
    (dest / "meta_Video_Games.jsonl.gz.part").write_bytes(data[:100])
    (dest / "meta_Video_Games.jsonl.gz.part.json").write_text(json.dumps({"validator": etag}))
    with serve(remote) as (base, state):
        got = download.fetch(f"{base}/raw/meta_categories/meta_Video_Games.jsonl.gz", dest)
    assert got.read_bytes() == data
    assert state.requests[0]["range"] == "bytes=100-" and state.requests[0]["if_range"] == etag
    assert not (dest / "meta_Video_Games.jsonl.gz.part").exists()


def test_interrupted_transfer_resumes_on_retry(remote, tmp_path):
    src = remote / "raw/meta_categories/meta_Video_Games.jsonl.gz"
    with serve(remote) as (base, state):
        state.cut_next_after = 50
        state.fail_next = 0
        got = download.fetch(f"{base}/raw/meta_categories/meta_Video_Games.jsonl.gz", tmp_path / "raw")
    assert got.read_bytes() == src.read_bytes()
    assert state.requests[0]["range"] is None and state.requests[1]["range"] == "bytes=50-"


def test_server_errors_are_retried_then_reported(remote, tmp_path):
    url_path = "raw/meta_categories/meta_Video_Games.jsonl.gz"
    with serve(remote) as (base, state):
        state.fail_next = 2
        got = download.fetch(f"{base}/{url_path}", tmp_path / "a")
        assert got.read_bytes() == (remote / url_path).read_bytes() and len(state.requests) == 3
        state.fail_next = 100
        with pytest.raises(DownloadError, match="giving up after 5 attempts"):
            download.fetch(f"{base}/{url_path}", tmp_path / "b")
    assert not (tmp_path / "b" / "meta_Video_Games.jsonl.gz").exists()


def test_server_ignoring_range_restarts_cleanly(remote, tmp_path):
    dest = tmp_path / "raw"
    dest.mkdir()
    src = remote / "raw/meta_categories/meta_Video_Games.jsonl.gz"
    (dest / "meta_Video_Games.jsonl.gz.part").write_bytes(b"garbage-prefix")
    (dest / "meta_Video_Games.jsonl.gz.part.json").write_text(json.dumps({"validator": '"x"'}))
    with serve(remote) as (base, state):
        state.ignore_range = True
        got = download.fetch(f"{base}/raw/meta_categories/meta_Video_Games.jsonl.gz", dest)
    assert got.read_bytes() == src.read_bytes()


def test_http_404_and_unknown_category(remote, tmp_path):
    with serve(remote) as (base, _):
        with pytest.raises(DownloadError, match=r"Video_Games\.jsonl\.gz: HTTP 404"):
            download.download_amazon("Video_Games", _cfg(base + "/nope", amazon_input="raw_reviews"), tmp_path)
    with pytest.raises(DataError, match="unknown Amazon Reviews 2023 category 'Video_Gamez'.*Video_Games"):
        download.download_amazon("Video_Gamez", DataCfg(), tmp_path)


# ----------------------------------------------------------------------------------------------------------
# recbole wheel

def _fake_pip(payload: bytes, calls: list):
    def pip(version: str, into: Path) -> None:
        calls.append(version)
        (into / f"recbole-{version}-py3-none-any.whl").write_bytes(payload)
    return pip


def test_recbole_wheel_download_verifies_checksum(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(download, "_pip_download", _fake_pip(b"wheel-bytes", calls))
    cfg = dataclasses.replace(DataCfg(), recbole_sha256=hashlib.sha256(b"wheel-bytes").hexdigest())
    got = download.download_recbole_wheel(cfg, tmp_path / "raw")
    assert got == tmp_path / "raw" / "recbole-1.2.1-py3-none-any.whl" and got.read_bytes() == b"wheel-bytes"
    assert download.download_recbole_wheel(cfg, tmp_path / "raw") == got and calls == ["1.2.1"]  # re-used
    bad = dataclasses.replace(cfg, recbole_sha256="0" * 64)
    with pytest.raises(DownloadError, match="does not match data.recbole_sha256"):
        download.download_recbole_wheel(bad, tmp_path / "raw")
    assert not list((tmp_path / "raw").iterdir())  # mismatching copy removed, nothing half-written left


def test_recbole_pip_failure_is_one_clear_error(tmp_path, monkeypatch):
    import subprocess

    class R:
        returncode, stdout, stderr = 1, "", "ERROR: No matching distribution found for recbole==9.9"
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: R())
    with pytest.raises(DownloadError, match="No matching distribution"):
        download.download_recbole_wheel(dataclasses.replace(DataCfg(), recbole_version="9.9"), tmp_path)


def test_real_wheel_is_reused_without_pip(tmp_path, monkeypatch):
    # the real wheel, fetched once into the tests' cache (as tests/test_data_movielens.py does), then a copy of it
    # with a matching sha256 is used as it is
    cache = Path(os.environ.get("R2EC_TEST_CACHE", Path.home() / ".cache" / "r2ec-tests")) / "recbole"
    real = download.download_recbole_wheel(DataCfg(), cache)
    monkeypatch.setattr(download, "_pip_download", lambda *a: pytest.fail("pip must not run"))
    shutil.copy(real, tmp_path / real.name)
    assert download.download_recbole_wheel(DataCfg(), tmp_path) == tmp_path / real.name
