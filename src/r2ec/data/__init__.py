"""Data stage: download (resumable, checksummed), Amazon Reviews 2023 and MovieLens-100K readers, and the
preprocessing protocol of DESIGN.md §2 that writes the prepared-dataset contract of §3.

Public entry points (called by the CLI):

- :func:`r2ec.data.download.download_amazon`, :func:`r2ec.data.download.download_recbole_wheel`
- :func:`r2ec.data.preprocess.prepare_amazon`, :func:`r2ec.data.preprocess.prepare_movielens`

Every input problem surfaces as a :class:`DataError` naming the file (and line / field where there is one).
"""

from r2ec.data.errors import DataError, DownloadError

__all__ = ["DataError", "DownloadError"]
