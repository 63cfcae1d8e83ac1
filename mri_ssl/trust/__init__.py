"""Bundle trust: static scan of configs, metadata schema, hash-checked downloads, safe archives, verify / pack.

File hashes themselves (``sha256_file``) live in ``mri_ssl.io.hashing``: data checks use them too."""

from mri_ssl.trust.files import check_archive, download_verified, safe_extract
from mri_ssl.trust.scan import Finding, scan_bundle
from mri_ssl.trust.verify import BundleReport, CheckResult, verify_bundle

__all__ = [
    "BundleReport",
    "CheckResult",
    "Finding",
    "check_archive",
    "download_verified",
    "safe_extract",
    "scan_bundle",
    "verify_bundle",
]
