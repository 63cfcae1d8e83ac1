"""fetch-weights (hash-checked download from a local HTTP server / file:// URL), archive safety, pack / unpack."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest

from bundle_runner import bundle_dir
from mri_ssl.cli import main
from mri_ssl.errors import InputError
from mri_ssl.io.hashing import sha256_file
from mri_ssl.trust.files import check_archive, download_verified, safe_extract
from mri_ssl.trust.packing import pack_bundle, unpack_bundle
from mri_ssl.trust.weights import fetch_weights
from trust_fixtures import make_tiny_bundle

WEIGHTS = b"released weights " * 1000


@pytest.fixture(scope="module")
def http_server(tmp_path_factory):
    """A static file server on 127.0.0.1 (a free port) over a folder the tests fill."""
    folder = tmp_path_factory.mktemp("served")
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_download_over_http_is_hash_checked_then_moved(http_server, tmp_path):
    served, url = http_server
    (served / "model.pt").write_bytes(WEIGHTS)
    target = tmp_path / "models" / "model.pt"
    download_verified(f"{url}/model.pt", target, sha(WEIGHTS))
    assert target.read_bytes() == WEIGHTS and leftovers(target.parent) == ["model.pt"]


def test_hash_mismatch_leaves_no_file_and_keeps_an_older_one(http_server, tmp_path):
    served, url = http_server
    (served / "tampered.pt").write_bytes(WEIGHTS + b"!")
    target = tmp_path / "models" / "model.pt"
    with pytest.raises(InputError, match="sha256 mismatch"):
        download_verified(f"{url}/tampered.pt", target, sha(WEIGHTS))
    assert leftovers(target.parent) == []  # no model.pt, no temporary file
    target.write_bytes(b"previous")
    with pytest.raises(InputError, match="sha256 mismatch"):
        download_verified(f"{url}/tampered.pt", target, sha(WEIGHTS))
    assert target.read_bytes() == b"previous" and leftovers(target.parent) == ["model.pt"]


def test_download_errors_name_the_url(http_server, tmp_path):
    _, url = http_server
    with pytest.raises(InputError, match="missing.pt: download failed"):
        download_verified(f"{url}/missing.pt", tmp_path / "m.pt", sha(b""))
    with pytest.raises(InputError, match="64-hex-digit sha256"):
        download_verified(f"{url}/x", tmp_path / "m.pt", "abc")
    with pytest.raises(InputError, match="only http, https and file"):
        download_verified("ftp://example.org/x", tmp_path / "m.pt", sha(b""))
    assert leftovers(tmp_path) == []


def write_tar(path: Path, members: dict[str, bytes], links: dict[str, str] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            archive.addfile(info)
    return path


def test_fetch_weights_cli_from_a_file_url_with_an_archive(tmp_path):
    archive = write_tar(tmp_path / "weights.tar.gz", {"model.pt": WEIGHTS, "sub/extra.txt": b"x"})
    entry = (f"large_files:\n  - path: models/weights.tar.gz\n    url: {archive.as_uri()}\n"
             f"    hash_val: {sha256_file(archive)}\n    hash_type: sha256\n")
    bundle = make_tiny_bundle(tmp_path / "b", **{"large_files.yml": entry})
    assert main(["fetch-weights", str(bundle)]) == 0
    assert (bundle / "models" / "model.pt").read_bytes() == WEIGHTS
    assert (bundle / "models" / "sub" / "extra.txt").read_bytes() == b"x"
    assert main(["verify-bundle", "--static-only", str(bundle)]) == 0  # the local copy matches its sha256
    assert fetch_weights(bundle, echo=lambda line: None)  # second call: hash matches, nothing downloaded


def test_fetch_weights_with_a_wrong_hash_leaves_nothing(tmp_path, capsys):
    source = tmp_path / "model.pt"
    source.write_bytes(WEIGHTS)
    entry = (f"large_files:\n  - {{path: models/model.pt, url: '{source.as_uri()}', hash_val: '{'0' * 64}', "
             f"hash_type: sha256}}\n")
    bundle = make_tiny_bundle(tmp_path / "b", **{"large_files.yml": entry})
    shipped = (bundle / "models" / "model.pt").read_bytes()  # the tiny bundle ships weights, as zoo bundles do
    assert main(["fetch-weights", str(bundle)]) == 2
    assert "sha256 mismatch" in capsys.readouterr().err
    # No partial download is left, and the weights that were there are untouched.
    assert leftovers(bundle / "models") == ["model.pt"]
    assert (bundle / "models" / "model.pt").read_bytes() == shipped


@pytest.mark.parametrize("kind, name", [("tar", "../escape.txt"), ("tar", "/abs/escape.txt"),
                                        ("zip", "../escape.txt"), ("zip", "/abs/escape.txt"),
                                        ("tar", "a/../../escape.txt")])
def test_archives_with_unsafe_paths_are_refused_before_extraction(tmp_path, kind, name):
    archive = tmp_path / f"bad.{'tar.gz' if kind == 'tar' else 'zip'}"
    if kind == "tar":
        write_tar(archive, {"ok.txt": b"fine", name: b"evil"})
    else:
        with zipfile.ZipFile(archive, "w") as handle:
            handle.writestr("ok.txt", b"fine")
            handle.writestr(zipfile.ZipInfo(name), b"evil")
    out = tmp_path / "out" / "deep"
    with pytest.raises(InputError, match="refused member"):
        safe_extract(archive, out)
    assert not (tmp_path / "out").exists() and not list(tmp_path.rglob("escape.txt"))


def test_archives_with_links_are_refused(tmp_path):
    with pytest.raises(InputError, match="link"):
        check_archive(write_tar(tmp_path / "link.tar.gz", {"ok.txt": b"x"}, links={"passwd": "/etc/passwd"}))
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        info = zipfile.ZipInfo("passwd")
        info.external_attr = (0o120777 << 16)  # a symbolic link, as `zip --symlinks` stores it
        handle.writestr(info, "/etc/passwd")
    with pytest.raises(InputError, match="symbolic link"):
        check_archive(archive)


def test_pack_unpack_round_trip_of_a_repository_bundle(tmp_path):
    source = bundle_dir("mri_denoising")
    archive = pack_bundle(source, tmp_path / "mri_denoising_v0.1.1.zip")
    unpacked = unpack_bundle(archive, tmp_path / "out")
    assert unpacked == tmp_path / "out" / "mri_denoising"
    original = {p.relative_to(source).as_posix(): sha256_file(p) for p in source.rglob("*") if p.is_file()
                and not {"models", "logs", "demo_data", "__pycache__"} & set(p.relative_to(source).parts)}
    copied = {p.relative_to(unpacked).as_posix(): sha256_file(p) for p in unpacked.rglob("*") if p.is_file()}
    assert copied.pop("manifest.json") and copied == original


def rewrite_zip(source: Path, target: Path, change) -> Path:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for info in old.infolist():
            data = change(info.filename, old.read(info.filename))
            if data is not None:
                new.writestr(info.filename, data)
        extra = change(None, None)
        if extra:
            new.writestr(*extra)
    return target


@pytest.mark.parametrize("change, message", [
    (lambda n, d: (d.replace(b"SimpleInferer", b"EvilInferer") if n and n.endswith("train.json") else d)
     if n else None, "configs/train.json: sha256"),
    (lambda n, d: d if n else ("tiny/configs/extra.json", "{}"), "files not in the manifest"),
    (lambda n, d: None if n and n.endswith("LICENSE") else d if n else None, "not in the archive: ['LICENSE']"),
    (lambda n, d: None if n and n.endswith("manifest.json") else d if n else None, "no tiny/manifest.json"),
])
def test_unpack_refuses_a_tampered_archive_and_writes_nothing(tmp_path, change, message):
    archive = pack_bundle(make_tiny_bundle(tmp_path / "tiny"), tmp_path / "tiny_v0.1.0.zip")
    tampered = rewrite_zip(archive, tmp_path / "tampered.zip", change)
    with pytest.raises(InputError, match=message.replace("[", r"\[").replace("]", r"\]")):
        unpack_bundle(tampered, tmp_path / "out")
    assert leftovers(tmp_path / "out") == []


def test_pack_bundle_cli_refuses_a_bundle_that_fails_verification(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "tiny", **{"LICENSE": None})
    assert main(["pack-bundle", str(bundle), "--static-only", "--out", str(tmp_path / "x.zip")]) == 1
    assert not (tmp_path / "x.zip").exists()
    (bundle / "LICENSE").write_text("Apache-2.0\n")
    assert main(["pack-bundle", str(bundle), "--static-only", "--out", str(tmp_path / "x.zip")]) == 0
    assert main(["unpack-bundle", str(tmp_path / "x.zip"), "--out", str(tmp_path / "u")]) == 0
    assert main(["unpack-bundle", str(tmp_path / "x.zip"), "--out", str(tmp_path / "u")]) == 2  # exists already
