"""Fault injection on archives: zip bombs and oversized members are refused while streaming, with memory bounded.

The probe of issue 19 unpacked a 1 MB archive whose manifest listed a 1 GB member: the member was read whole into
memory (2.3 GB peak RSS) before its hash was checked, and with the right hash listed 1.1 GB were written. Members are
now streamed to disk in 1 MiB chunks, hashed on the way, and refused at the chunk that would cross a size or
compression-ratio limit.
"""

import hashlib
import io
import json
import tarfile
import tracemalloc
import zipfile

import numpy as np
import pytest

from mri_ssl.cli import main
from mri_ssl.errors import InputError
from mri_ssl.trust.files import ExtractLimits, safe_extract
from mri_ssl.trust.packing import unpack_bundle

MIB = 1 << 20


def write_bundle_zip(path, members: dict[str, bytes], listed_hashes: dict[str, str] | None = None):
    """A packed bundle ``tiny/`` with ``members`` and a manifest listing them (with their true hashes unless
    ``listed_hashes`` says otherwise)."""
    hashes = {name: hashlib.sha256(data).hexdigest() for name, data in members.items()}
    hashes.update(listed_hashes or {})
    manifest = {"name": "tiny", "version": "0.1.0", "hash_type": "sha256", "files": hashes}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(f"tiny/{name}", data)
        archive.writestr("tiny/manifest.json", json.dumps(manifest))
    return path


def noise(size: int, seed: int = 0) -> bytes:
    """Incompressible bytes."""
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def peak_python_bytes(function, *args, **kwargs):
    """(what ``function`` raised, the peak of Python's allocations while it ran)."""
    tracemalloc.start()
    try:
        function(*args, **kwargs)
    except InputError as error:
        raised = error
    else:
        raised = None
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return raised, peak


def test_a_zip_bomb_with_its_true_hash_is_refused_by_its_compression_ratio(tmp_path):
    bomb = write_bundle_zip(tmp_path / "bomb.zip", {"configs/train.json": b"{}", "data.bin": bytes(48 * MIB)})
    assert bomb.stat().st_size < MIB // 4  # 48 MiB of zeros pack into ~50 KB
    raised, peak = peak_python_bytes(unpack_bundle, bomb, tmp_path / "out")
    assert raised is not None and "data.bin" in str(raised) and "compression ratio over 100:1" in str(raised)
    assert peak < 8 * MIB, f"peak Python memory {peak / MIB:.1f} MiB while refusing a 48 MiB member"
    assert not (tmp_path / "out").exists()


def test_a_large_member_with_a_wrong_hash_is_refused_without_reading_it_into_memory(tmp_path):
    archive = write_bundle_zip(tmp_path / "wrong.zip", {"weights.bin": noise(12 * MIB)},
                               listed_hashes={"weights.bin": "0" * 64})
    raised, peak = peak_python_bytes(unpack_bundle, archive, tmp_path / "out")
    assert raised is not None and "weights.bin: sha256" in str(raised) and "does not match" in str(raised)
    assert peak < 8 * MIB, f"peak Python memory {peak / MIB:.1f} MiB for a 12 MiB member"
    assert not (tmp_path / "out").exists()


def test_member_and_total_size_limits_refuse_before_the_limit_is_crossed(tmp_path):
    members = {f"part{i}.bin": noise(2 * MIB, seed=i) for i in range(3)}
    archive = write_bundle_zip(tmp_path / "big.zip", members)
    with pytest.raises(InputError, match=r"'tiny/part0.bin': declares 2097152 bytes, more than the 1048576-byte"):
        unpack_bundle(archive, tmp_path / "out", ExtractLimits(member_bytes=MIB))
    with pytest.raises(InputError, match=r"'tiny/part2.bin': the archive unpacks to more than its 5242880-byte"):
        unpack_bundle(archive, tmp_path / "out", ExtractLimits(total_bytes=5 * MIB))
    assert not (tmp_path / "out").exists()
    assert unpack_bundle(archive, tmp_path / "out").joinpath("part2.bin").read_bytes() == members["part2.bin"]


def test_a_tar_bomb_is_refused_by_the_ratio_of_the_whole_archive(tmp_path):
    # A .tar.gz is compressed as one stream, so members have no compressed size of their own: the ratio is that of
    # everything unpacked so far against the archive (the weights archives of fetch-weights are tars).
    archive = tmp_path / "lying.tar.gz"
    data = bytes(30 * MIB)
    with tarfile.open(archive, "w:gz") as handle:
        info = tarfile.TarInfo("zeros.bin")
        info.size = len(data)
        handle.addfile(info, io.BytesIO(data))
    with pytest.raises(InputError, match="zeros.bin.*compression ratio over 100:1"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_the_cli_refuses_a_bomb_in_one_line_and_exits_non_zero(tmp_path, capsys):
    bomb = write_bundle_zip(tmp_path / "bomb.zip", {"data.bin": bytes(24 * MIB)})
    assert main(["unpack-bundle", str(bomb), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "bomb.zip" in error and "decompression bomb" in error
