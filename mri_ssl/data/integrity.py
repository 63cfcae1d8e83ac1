"""Data integrity checks: read every file of every case completely and check it before any training starts.

What the usual tools let through (measured for issue 9): SimpleITK zero-fills a truncated .nii.gz and turns NaN into
0; nibabel raises a bare ``EOFError`` and misses a flipped byte inside a gzip stream (it never reads to the CRC); a
68-byte .nii.gz whose header claims 4000^3 voxels makes nibabel try to allocate ~256 GB; MONAI rewrites a NaN sform
and crops a label two voxels shorter than its image. Here:

* one reader per file kind (``read_nifti``, ``read_raster_image`` for PNG/JPEG/TIFF, ``read_dicom``; ``read_image``
  picks by file name) checks, in this order and *before allocating the voxel array*: the file exists and is not
  empty, the header parses, the declared size fits ``max_bytes``, the file is long enough for what the header
  declares (.nii) / the whole gzip stream decompresses with a correct CRC (.nii.gz) / every PNG chunk CRC is right,
  no axis has size 0, the number of spatial dimensions is what the caller expects (a parameter: 3 for volumes, 2 for
  fundus photographs or X-ray DICOM); then after reading: every voxel finite, affine / pixel spacing finite and
  non-degenerate;
* ``check_case`` checks the files of one datalist entry together: same spatial shape and affine (within
  ``AFFINE_TOLERANCE_MM``) across every channel / map / label, label values among the declared classes, qMRI maps
  in physical ranges (``QMRI_RANGES``);
* ``check_data`` runs ``check_case`` over the splits of a datalist, adds the dataset-level check that no subject is
  in two splits, and returns an ``IntegrityReport`` (a per-case table, JSON, ``raise_on_error``). Bundles call
  ``check_data(...).raise_on_error()`` in ``initialize``; ``mri-ssl check-data MANIFEST`` prints the table.

Every failure is a ``DataIntegrityError`` (an ``InputError``) naming the file, the check (one of ``CHECKS``) and the
offending value.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import logging
import math
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from mri_ssl.errors import InputError

logger = logging.getLogger(__name__)

# Memory the reader may use for one file (declared voxels x (stored bytes + 4 bytes of float32)). 8 GiB holds a
# 1024^3 float32 volume with room to spare; a header asking for more is almost certainly corrupt.
DEFAULT_MAX_BYTES = 8 * 1024 ** 3
# Affines of files of one case must agree to this tolerance (mm), as scanner exports differ in float rounding.
AFFINE_TOLERANCE_MM = 1e-3
# |det| of the 3x3 part of an affine below this (mm^3) is a degenerate (flat or singular) voxel.
MIN_VOXEL_VOLUME_MM3 = 1e-9

# The name of every check, as reports and errors show it, and what it means.
CHECKS = {
    "exists": "the file is there",
    "readable": "the file is not empty and its header parses as the format its name says",
    "complete": "the whole file reads: gzip CRC, PNG chunk CRCs, .nii length vs header, DICOM pixel data",
    "memory": "the declared image size fits the memory cap before anything is allocated",
    "dimensions": "the number of spatial dimensions the bundle expects",
    "zero_axis": "no axis of size 0",
    "finite": "no NaN or Inf voxel",
    "affine": "affine (sform/qform/orientation) finite and non-degenerate",
    "spacing": "pixdim / PixelSpacing finite and non-zero",
    "shape_match": "every file of a case has the same spatial shape",
    "affine_match": "every file of a case has the same affine (within AFFINE_TOLERANCE_MM)",
    "label_values": "label values among the declared classes",
    "physical_range": "qMRI maps in their physical range (QMRI_RANGES)",
    "entry": "a datalist entry names the files the bundle needs",
    "split_leak": "no subject in two splits",
    "duplicate_file": "no image file (by real path or by content) under two splits (error) or two subjects (warning)",
    "constant": "(warning) an image with a single value everywhere",
    "empty_label": "(warning) a label with background only",
}

# Physical ranges of qMRI maps: (low, low inclusive, high or None, high inclusive, unit sentence). R1 = 0 (T1
# infinite) is allowed as it is the usual value of masked background; above 10 1/s (T1 < 100 ms) no tissue is.
QMRI_RANGES = {
    "pd": (0.0, True, None, True, "proton density must be >= 0"),
    "r1": (0.0, True, 10.0, True, "R1 must be in [0, 10] 1/s (T1 >= 100 ms; 0 for masked background)"),
    "r2s": (0.0, True, 1000.0, True, "R2* must be in [0, 1000] 1/s"),
    "r2": (0.0, True, 1000.0, True, "R2 must be in [0, 1000] 1/s"),
    "mt": (0.0, True, 1.0, False, "MT saturation must be a fraction in [0, 1) (divide a map in percent by 100)"),
    "b1": (0.0, True, None, True, "the B1 / receive field must be >= 0"),
}

NIFTI_SUFFIXES = (".nii", ".nii.gz")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
DICOM_SUFFIXES = (".dcm", ".dicom")


class DataIntegrityError(InputError):
    """A file (or a case, or a datalist) failed a data check.

    Args:
        source: the file (or datalist / subject) that failed.
        check: which check failed, a key of ``CHECKS``.
        problem: what is wrong and, where possible, what to do.
        value: the offending value (a shape, a count, a number), kept for reports.
    """

    def __init__(self, source: str | os.PathLike, check: str, problem: str, value=None):
        self.check = check
        self.value = value
        super().__init__(str(source), f"{problem} [check: {check}]")


@dataclass
class CheckedImage:
    """A file that passed the per-file checks: float32 ``data`` (spatial axes first, a trailing colour axis for
    RGB images), its 4x4 ``affine`` (mm; pixel units where the format has no geometry) and ``spatial_dims``."""

    path: Path
    data: np.ndarray
    affine: np.ndarray
    spatial_dims: int

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape[: self.spatial_dims])


# ----------------------------------------------------------------------------------------------------------------
# shared per-file checks


def _check_exists(path: Path) -> None:
    if not path.is_file():
        raise DataIntegrityError(path, "exists", "file not found")
    if path.stat().st_size == 0:
        raise DataIntegrityError(path, "readable", "empty file (0 bytes)", 0)


def _format_bytes(count: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def _check_memory(path: Path, shape: Sequence[int], bytes_per_value: int, max_bytes: int | None) -> None:
    # Python ints: a corrupt header's product must not overflow to a small number.
    voxels = math.prod(int(s) for s in shape)
    needed = voxels * (int(bytes_per_value) + 4)  # stored values + the float32 copy handed to the caller
    if max_bytes is not None and needed > max_bytes:
        raise DataIntegrityError(path, "memory", f"header declares shape {tuple(int(s) for s in shape)}; reading it "
                                                 f"needs about {_format_bytes(needed)}, over the memory cap of "
                                                 f"{_format_bytes(max_bytes)} (max_bytes); is the header corrupt?",
                                 needed)


def _check_axes(path: Path, shape: Sequence[int]) -> None:
    if any(int(s) <= 0 for s in shape):
        raise DataIntegrityError(path, "zero_axis", f"an axis has size 0 (shape {tuple(int(s) for s in shape)})",
                                 tuple(int(s) for s in shape))


def _check_dimensions(path: Path, spatial: int, shape: Sequence[int], expected: int | None) -> None:
    if expected is not None and spatial != int(expected):
        raise DataIntegrityError(path, "dimensions", f"image has {spatial} dimensions {tuple(shape)}, "
                                                     f"expected {int(expected)} spatial dimensions", tuple(shape))


def _check_finite_voxels(path: Path, data: np.ndarray) -> None:
    if not np.issubdtype(data.dtype, np.floating):
        return
    finite = np.isfinite(data)
    if not finite.all():
        nan, inf = int(np.isnan(data).sum()), int(np.isinf(data).sum())
        first = tuple(int(i) for i in np.argwhere(~finite)[0])
        raise DataIntegrityError(path, "finite", f"non-finite voxels: {nan} NaN and {inf} Inf, the first at index "
                                                 f"{first}",
                                 {"nan": nan, "inf": inf})


def _check_affine(path: Path, affine: np.ndarray, what: str = "affine") -> None:
    affine = np.asarray(affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)):
        raise DataIntegrityError(path, "affine", f"{what} holds NaN or Inf:\n{affine}", affine.tolist())
    volume = abs(float(np.linalg.det(affine[:3, :3])))
    if volume < MIN_VOXEL_VOLUME_MM3:
        raise DataIntegrityError(path, "affine", f"{what} is degenerate (voxel volume {volume:.3g} mm^3):\n{affine}",
                                 affine.tolist())


def _check_spacing(path: Path, spacing: Sequence[float], what: str) -> None:
    spacing = [float(s) for s in spacing]
    if not all(math.isfinite(s) and s != 0 for s in spacing):
        raise DataIntegrityError(path, "spacing", f"{what} {spacing} must be finite and non-zero", spacing)


# ----------------------------------------------------------------------------------------------------------------
# NIfTI


def _nifti_header(path: Path, raw: bytes):
    """Parse a NIfTI-1 or NIfTI-2 single-file header from the first bytes of the (decompressed) file."""
    import nibabel as nib

    if len(raw) < 4:
        raise DataIntegrityError(path, "readable", f"only {len(raw)} bytes; not a NIfTI file", len(raw))
    sizes = {int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")}
    klass = nib.Nifti1Image if 348 in sizes else nib.Nifti2Image if 540 in sizes else None
    if klass is None:
        raise DataIntegrityError(path, "readable", "not a NIfTI file (the header size field is neither 348 nor 540)")
    needed = klass.header_class.template_dtype.itemsize
    if len(raw) < needed:
        raise DataIntegrityError(path, "complete", f"file ends inside the header ({len(raw)} of {needed} bytes); "
                                                   f"is it truncated?", len(raw))
    try:
        header = klass.header_class.from_fileobj(io.BytesIO(raw[:needed]), check=False)  # nibabel "fixes" zero pixdim
    except Exception as error:
        raise DataIntegrityError(path, "readable", f"invalid NIfTI header ({type(error).__name__}: {error})") from error
    if header["magic"].item() not in (b"n+1", b"n+2"):
        raise DataIntegrityError(path, "readable", f"NIfTI magic {header['magic'].item()!r} is not a single-file "
                                                   f".nii (n+1 / n+2); convert .hdr/.img pairs to .nii")
    return klass, header


def _header_shape(path: Path, header) -> tuple[int, ...]:
    dim = [int(d) for d in header["dim"]]
    if not 1 <= dim[0] <= 7:
        raise DataIntegrityError(path, "readable", f"header dim[0] = {dim[0]} is not a number of dimensions (1-7)")
    return tuple(dim[1: dim[0] + 1])


def _read_gzip_completely(path: Path, expected_bytes: int) -> bytes:
    """Decompress the whole gzip stream, every member, checking each CRC and length trailer; never zero-fill.

    zlib in gzip mode (``wbits=31``) verifies the CRC-32 and size trailer of a member when it reaches its end; a
    stream that stops before that end is truncated. Only the first ``expected_bytes`` are kept; the rest is
    decompressed in bounded pieces just to reach the trailer (so a gzip bomb cannot exhaust memory).
    """
    kept, total = [], 0
    pending = path.read_bytes()
    try:
        while True:
            inflater = zlib.decompressobj(wbits=31)
            while True:
                limit = expected_bytes - total if total < expected_bytes else 64 * 1024 ** 2
                piece = inflater.decompress(pending, max(1, limit))
                pending = inflater.unconsumed_tail
                if total < expected_bytes:
                    kept.append(piece)
                total += len(piece)
                if inflater.eof:
                    break
                if not piece and not pending:
                    raise DataIntegrityError(path, "complete", f"the gzip stream ends early after {total} "
                                                               f"decompressed bytes; the file is truncated", total)
            pending = inflater.unused_data
            if not pending.strip(b"\0"):  # end of the last member (zero padding after it is tolerated)
                break
    except zlib.error as error:
        raise DataIntegrityError(path, "complete", f"the gzip stream is corrupt (zlib: {error})") from error
    return b"".join(kept)


def read_nifti(path: str | os.PathLike, spatial_dims: int | None = 3,
               max_bytes: int | None = DEFAULT_MAX_BYTES) -> CheckedImage:
    """Read a .nii or .nii.gz file completely, checking it; trailing singleton axes (one-volume 4-D) are dropped.

    Raises ``DataIntegrityError`` (check ``exists``, ``readable``, ``memory``, ``complete``, ``zero_axis``,
    ``dimensions``, ``finite``, ``spacing`` or ``affine``) naming the file.
    """
    path = Path(path)
    _check_exists(path)
    compressed = path.name.lower().endswith(".gz")
    try:
        if compressed:
            with gzip.open(path, "rb") as stream:
                start = stream.read(540)
        else:
            with open(path, "rb") as stream:
                start = stream.read(540)
    except (EOFError, gzip.BadGzipFile, zlib.error, OSError) as error:
        what = "gzip stream" if compressed else "file"
        raise DataIntegrityError(path, "readable" if isinstance(error, gzip.BadGzipFile) else "complete",
                                 f"cannot read the {what} ({type(error).__name__}: {error}); is the file truncated "
                                 f"or not a .nii{'.gz' if compressed else ''}?") from error
    klass, header = _nifti_header(path, start)
    shape = _header_shape(path, header)
    _check_axes(path, shape)
    try:
        dtype, offset = header.get_data_dtype(), int(header.get_data_offset())
    except Exception as error:
        raise DataIntegrityError(path, "readable", f"invalid NIfTI header ({type(error).__name__}: {error})") from error
    _check_memory(path, shape, dtype.itemsize, max_bytes)
    # What the header says is checked before the (possibly long) read.
    spatial = shape
    while len(spatial) > 3 and spatial[-1] == 1:
        spatial = spatial[:-1]
    _check_dimensions(path, len(spatial), spatial, spatial_dims)
    _check_spacing(path, header["pixdim"][1: 1 + min(len(spatial), 3)], "pixdim (voxel size)")
    expected = offset + math.prod(shape) * dtype.itemsize
    if compressed:
        raw = _read_gzip_completely(path, expected)
    else:
        length = path.stat().st_size
        if length < expected:
            raise DataIntegrityError(path, "complete", f"file has {length} bytes but its header declares {expected} "
                                                       f"(offset {offset} + shape {shape} of "
                                                       f"{dtype}); the file is truncated", length)
        raw = None  # read through nibabel's memory map below: no extra copy of the file
    if raw is not None and len(raw) < expected:
        raise DataIntegrityError(path, "complete", f"decompressed data has {len(raw)} bytes but the header declares "
                                                   f"{expected}; the file is truncated", len(raw))
    try:
        image = klass.from_bytes(raw) if raw is not None else klass.from_filename(str(path))
        data = np.asarray(image.dataobj, dtype=np.float32).reshape(spatial)
        if isinstance(data, np.memmap) or data.base is not None:
            # A view of a memory-mapped file: copy, so the file is read here (not later) and the caller owns it.
            data = np.array(data)
    except Exception as error:
        raise DataIntegrityError(path, "readable", f"cannot decode the voxel data ({type(error).__name__}: {error})"
                                 ) from error
    try:
        sform = header.get_sform() if int(header["sform_code"]) > 0 else None
        qform = header.get_qform() if int(header["qform_code"]) > 0 else None
        affine = np.asarray(image.affine, dtype=np.float64)
    except Exception as error:  # e.g. a NaN quaternion nibabel cannot turn into a matrix
        raise DataIntegrityError(path, "affine", f"cannot build the affine from the header ({type(error).__name__}: "
                                                 f"{error})") from error
    if sform is not None:
        _check_affine(path, sform, "sform")
    if qform is not None:
        _check_affine(path, qform, "qform")
    _check_affine(path, affine)
    _check_finite_voxels(path, data)
    return CheckedImage(path, data, affine, len(spatial))


# ----------------------------------------------------------------------------------------------------------------
# PNG / JPEG / TIFF (Pillow)


def read_raster_image(path: str | os.PathLike, spatial_dims: int | None = 2,
                      max_bytes: int | None = DEFAULT_MAX_BYTES) -> CheckedImage:
    """Read a PNG (or JPEG / TIFF / BMP) completely with Pillow, checking it; returns ``(H, W)`` or ``(H, W, C)``.

    Every PNG chunk CRC is verified (``Image.verify``) and the pixels are decoded in full; a truncated file is an
    error, never padded (Pillow's ``LOAD_TRUNCATED_IMAGES`` stays off). The affine is the identity (pixel units).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    _check_exists(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
            bands = len(image.getbands())
            bits = {"1": 1, "L": 8, "P": 8, "I;16": 16, "I": 32, "F": 32}.get(image.mode, 8 * bands)
            shape = (height, width) + ((bands,) if bands > 1 else ())
            _check_axes(path, shape)
            _check_memory(path, shape, max(1, bits // 8), max_bytes)
            image.verify()  # every chunk CRC (PNG); must be done on a freshly opened image
        with Image.open(path) as image:
            image.load()
            data = np.asarray(image)
    except DataIntegrityError:
        raise
    except Image.DecompressionBombError as error:
        raise DataIntegrityError(path, "memory", f"declared size is a decompression bomb ({error})") from error
    except UnidentifiedImageError as error:
        raise DataIntegrityError(path, "readable", "not an image file Pillow can read") from error
    except (OSError, SyntaxError, ValueError, zlib.error) as error:
        raise DataIntegrityError(path, "complete", f"cannot read the whole image ({type(error).__name__}: {error}); "
                                                   f"is the file truncated or damaged?") from error
    _check_dimensions(path, 2, data.shape[:2], spatial_dims)
    data = data.astype(np.float32)
    _check_finite_voxels(path, data)
    return CheckedImage(path, data, np.eye(4), 2)


# ----------------------------------------------------------------------------------------------------------------
# DICOM (pydicom)


def _dicom_affine(dataset, frames: int) -> tuple[np.ndarray, list[float] | None]:
    """4x4 affine (LPS mm) of a DICOM image from Image Orientation / Position (Patient) and Pixel Spacing."""
    spacing = [float(s) for s in dataset.PixelSpacing] if "PixelSpacing" in dataset else None
    row_mm, column_mm = spacing if spacing else (1.0, 1.0)
    slice_mm = float(dataset.get("SpacingBetweenSlices", None) or dataset.get("SliceThickness", None) or 1.0)
    affine = np.eye(4)
    if "ImageOrientationPatient" in dataset and "ImagePositionPatient" in dataset:
        cosines = np.asarray([float(v) for v in dataset.ImageOrientationPatient])
        along_row, along_column = cosines[:3], cosines[3:]
        # Index (row i, column j[, frame k]) -> mm: rows advance along the column cosine, columns along the row one.
        affine[:3, 0] = along_column * row_mm
        affine[:3, 1] = along_row * column_mm
        affine[:3, 2] = np.cross(along_row, along_column) * slice_mm
        affine[:3, 3] = [float(v) for v in dataset.ImagePositionPatient]
    else:
        affine[:3, :3] = np.diag([row_mm, column_mm, slice_mm])
    if frames > 1:  # pixel_array is (frames, rows, columns): frames first
        affine[:3, :3] = affine[:3, [2, 0, 1]]
    return affine, spacing


def read_dicom(path: str | os.PathLike, spatial_dims: int | None = None,
               max_bytes: int | None = DEFAULT_MAX_BYTES) -> CheckedImage:
    """Read one DICOM file completely with pydicom, checking it; ``(rows, columns)`` or ``(frames, rows, columns)``
    (a trailing colour axis for RGB). Rescale slope / intercept are applied (modality LUT)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    _check_exists(path)
    try:
        dataset = pydicom.dcmread(path)
    except InvalidDicomError as error:
        raise DataIntegrityError(path, "readable", f"not a DICOM file ({error})") from error
    except Exception as error:
        raise DataIntegrityError(path, "complete", f"cannot parse the DICOM data set ({type(error).__name__}: "
                                                   f"{error}); is the file truncated or malformed?") from error
    if "PixelData" not in dataset and "FloatPixelData" not in dataset and "DoubleFloatPixelData" not in dataset:
        raise DataIntegrityError(path, "readable", "the DICOM file holds no pixel data (not an image)")
    try:
        rows, columns = int(dataset.Rows), int(dataset.Columns)
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        samples = int(dataset.get("SamplesPerPixel", 1) or 1)
        bits = int(dataset.BitsAllocated)
    except Exception as error:
        raise DataIntegrityError(path, "readable", f"image attributes missing or malformed ({type(error).__name__}: "
                                                   f"{error})") from error
    shape = ((frames,) if frames > 1 else ()) + (rows, columns) + ((samples,) if samples > 1 else ())
    _check_axes(path, shape)
    _check_memory(path, shape, max(1, bits // 8), max_bytes)
    spatial = 3 if frames > 1 else 2
    _check_dimensions(path, spatial, shape[:spatial], spatial_dims)
    try:
        data = dataset.pixel_array
        try:
            from pydicom.pixels import apply_modality_lut
        except ImportError:  # pydicom < 3
            from pydicom.pixel_data_handlers.util import apply_modality_lut
        data = np.asarray(apply_modality_lut(data, dataset), dtype=np.float32)
    except Exception as error:
        raise DataIntegrityError(path, "complete", f"cannot decode the pixel data ({type(error).__name__}: "
                                                   f"{error}); is the file truncated?") from error
    if tuple(data.shape) != shape:
        raise DataIntegrityError(path, "complete", f"decoded pixel data has shape {data.shape}, the header declares "
                                                   f"{shape}", tuple(data.shape))
    try:
        affine, spacing = _dicom_affine(dataset, frames)
    except Exception as error:
        raise DataIntegrityError(path, "affine", f"malformed geometry attributes ({type(error).__name__}: {error})"
                                 ) from error
    if spacing is not None:
        _check_spacing(path, spacing, "PixelSpacing (mm)")
    _check_affine(path, affine)
    _check_finite_voxels(path, data)
    return CheckedImage(path, data, affine, spatial)


# ----------------------------------------------------------------------------------------------------------------
# any file


def file_kind(path: str | os.PathLike) -> str:
    """``nifti``, ``raster`` (PNG/JPEG/TIFF/BMP) or ``dicom`` (``.dcm`` or no suffix, as scanners write them)."""
    name = str(path).lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(RASTER_SUFFIXES):
        return "raster"
    if name.endswith(DICOM_SUFFIXES) or not Path(name).suffix:
        return "dicom"
    raise DataIntegrityError(path, "readable", f"unknown image format; expected one of "
                                               f"{', '.join(NIFTI_SUFFIXES + RASTER_SUFFIXES + DICOM_SUFFIXES)}")


READERS: dict[str, Callable[..., CheckedImage]] = {"nifti": read_nifti, "raster": read_raster_image,
                                                   "dicom": read_dicom}


def read_image(path: str | os.PathLike, spatial_dims: int | None = 3,
               max_bytes: int | None = DEFAULT_MAX_BYTES) -> CheckedImage:
    """Read and check any supported image file (``READERS`` by ``file_kind``)."""
    return READERS[file_kind(path)](path, spatial_dims=spatial_dims, max_bytes=max_bytes)


def check_image_files(paths: Iterable[str | os.PathLike], spatial_dims: int | None = 3,
                      max_bytes: int | None = DEFAULT_MAX_BYTES) -> int:
    """Read and check each file on its own (inference inputs); raise the first ``DataIntegrityError``; return the
    number of files checked."""
    count = 0
    for path in paths:
        read_image(path, spatial_dims=spatial_dims, max_bytes=max_bytes)
        count += 1
    return count


def is_image_path(value) -> bool:
    """Whether a datalist value names an image file (by its ending)."""
    return isinstance(value, str) and value.lower().endswith(NIFTI_SUFFIXES + RASTER_SUFFIXES + DICOM_SUFFIXES)


# ----------------------------------------------------------------------------------------------------------------
# value checks


def check_physical_range(path: str | os.PathLike, map_name: str, data: np.ndarray) -> None:
    """Raise ``DataIntegrityError`` (check ``physical_range``) if a qMRI map leaves its ``QMRI_RANGES`` range."""
    low, low_inclusive, high, high_inclusive, sentence = QMRI_RANGES[map_name]
    bad = (data < low) if low_inclusive else (data <= low)
    if high is not None:
        bad |= (data > high) if high_inclusive else (data >= high)
    if bad.any():
        values = data[bad]
        raise DataIntegrityError(path, "physical_range", f"{map_name} map: {sentence}; {int(bad.sum())} voxel(s) "
                                                         f"outside, from {float(values.min()):.6g} to "
                                                         f"{float(values.max()):.6g}",
                                 [float(values.min()), float(values.max())])


def check_label_values(path: str | os.PathLike, label: np.ndarray, allowed: Iterable[int]) -> None:
    """Raise ``DataIntegrityError`` (check ``label_values``) for values not in ``allowed`` (fractions included)."""
    allowed = {int(v) for v in allowed}
    # Compared as floats, so a fractional value (an interpolated label) is caught too.
    unexpected = [int(v) if float(v).is_integer() else float(v) for v in np.unique(label).tolist() if v not in allowed]
    if unexpected:
        raise DataIntegrityError(path, "label_values", f"label values {unexpected[:10]} are not among the declared "
                                                       f"classes {sorted(allowed)}", unexpected[:10])


# ----------------------------------------------------------------------------------------------------------------
# cases and datalists


@dataclass
class Finding:
    """One result of a check: ``status`` is ``error`` or ``warning``; ``file`` what it is about."""

    file: str
    check: str
    status: str
    message: str
    value: object = None

    @classmethod
    def from_error(cls, error: DataIntegrityError) -> "Finding":
        return cls(error.source, error.check, "error", str(error), _plain(error.value))

    def as_error(self, more: str = "") -> DataIntegrityError:
        """The finding as the ``DataIntegrityError`` a loader raises (``more`` is appended to the problem)."""
        problem = self.message
        if problem.startswith(f"{self.file}: "):
            problem = problem[len(self.file) + 2:]
        return DataIntegrityError(self.file, self.check, problem.rsplit(" [check: ", 1)[0] + more, self.value)


def _plain(value):
    """A JSON-friendly copy of a check value."""
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


@dataclass
class CaseReport:
    """The findings of one datalist entry (``split``, ``index``, ``subject``)."""

    split: str
    index: int
    subject: str | None
    files: list[str]
    findings: list[Finding] = field(default_factory=list)

    @property
    def status(self) -> str:
        statuses = {finding.status for finding in self.findings}
        return "error" if "error" in statuses else "warning" if "warning" in statuses else "ok"


def check_case(files: Mapping[str, str | os.PathLike], label_key: str | None = None,
               label_values: Iterable[int] | None = None, spatial_dims: int | None = 3,
               max_bytes: int | None = DEFAULT_MAX_BYTES, map_keys: Iterable[str] = tuple(QMRI_RANGES)
               ) -> tuple[list[Finding], dict[str, CheckedImage]]:
    """Check the files of one case together; return ``(findings, images that passed the per-file checks)``.

    Args:
        files: datalist key -> file path, e.g. ``{"image": ..., "label": ...}`` or ``{"pd": ..., "r1": ...}``.
        label_key: the key of the label map (its values are checked against ``label_values``).
        label_values: the declared classes; None skips the value check.
        spatial_dims: spatial dimensions every file must have (None: any).
        max_bytes: memory cap per file.
        map_keys: keys that are qMRI maps, checked against ``QMRI_RANGES``.

    Every file is read even when another fails, so a report lists all problems of a case at once, in the order:
    per-file checks, then geometry agreement (the first file read is the reference for ``shape_match`` /
    ``affine_match``), then values (``physical_range``, ``label_values``).
    """
    findings: list[Finding] = []
    images: dict[str, CheckedImage] = {}
    map_keys = set(map_keys)
    for key, path in files.items():
        try:
            image = read_image(path, spatial_dims=spatial_dims, max_bytes=max_bytes)
        except DataIntegrityError as error:
            findings.append(Finding.from_error(error))
            continue
        images[key] = image
        if image.data.size and float(image.data.min()) == float(image.data.max()) and key != label_key:
            findings.append(Finding(str(path), "constant", "warning",
                                    f"{path}: every voxel is {float(image.data.min()):.6g}; intensity normalisation "
                                    f"will give zeros"))
        if key == label_key and image.data.size and not image.data.any():
            findings.append(Finding(str(path), "empty_label", "warning", f"{path}: label has background only"))
    reference = next(iter(images.items()), None)
    for key, image in images.items():
        if reference is None or key == reference[0]:
            continue
        reference_key, reference_image = reference
        role = "label" if key == label_key else f"{key}"
        if image.spatial_shape != reference_image.spatial_shape:
            findings.append(Finding.from_error(DataIntegrityError(
                image.path, "shape_match", f"{role} shape {image.spatial_shape} differs from "
                                           f"{reference_key} {reference_image.path} {reference_image.spatial_shape}",
                [list(image.spatial_shape), list(reference_image.spatial_shape)])))
        elif not np.allclose(image.affine, reference_image.affine, atol=AFFINE_TOLERANCE_MM):
            difference = float(np.abs(image.affine - reference_image.affine).max())
            findings.append(Finding.from_error(DataIntegrityError(
                image.path, "affine_match",
                f"{role} affine differs from that of {reference_key} {reference_image.path} by up to "
                f"{difference:.4g} mm:\n{image.affine}\nvs\n{reference_image.affine}", difference)))
    # Values last: a geometry mismatch is the more basic problem to report first.
    for key, image in images.items():
        try:
            if key in map_keys and key in QMRI_RANGES:
                check_physical_range(image.path, key, image.data)
            if key == label_key and label_values is not None:
                check_label_values(image.path, image.data, label_values)
        except DataIntegrityError as error:
            findings.append(Finding.from_error(error))
    return findings, images


@dataclass
class IntegrityReport:
    """Per-case findings plus dataset-level ones (``split_leak``, ``duplicate_file``, ``entry``) for one datalist."""

    datalist: str
    cases: list[CaseReport] = field(default_factory=list)
    dataset_findings: list[Finding] = field(default_factory=list)

    @property
    def findings(self) -> list[Finding]:
        return self.dataset_findings + [finding for case in self.cases for finding in case.findings]

    @property
    def errors(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.status == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.status == "warning"]

    def counts(self) -> dict[str, int]:
        counts = {"ok": 0, "warning": 0, "error": 0}
        for case in self.cases:
            counts[case.status] += 1
        return counts

    def as_dict(self) -> dict:
        return {
            "datalist": self.datalist,
            "checks": CHECKS,
            "summary": {"cases": len(self.cases), **self.counts(), "dataset_errors": sum(
                finding.status == "error" for finding in self.dataset_findings)},
            "dataset": [vars(finding) for finding in self.dataset_findings],
            "cases": [{"split": case.split, "index": case.index, "subject": case.subject, "status": case.status,
                       "files": case.files, "findings": [vars(finding) for finding in case.findings]}
                      for case in self.cases],
        }

    def table(self) -> str:
        """One row per case (and per extra finding): split, index, subject, status, check, file and value."""
        header = ("split", "#", "subject", "status", "check", "detail")
        rows = [("dataset", "-", "-", finding.status, finding.check, _first_line(finding.message))
                for finding in self.dataset_findings]
        for case in self.cases:
            findings = case.findings or [None]
            for finding in findings:
                rows.append((case.split, str(case.index), str(case.subject or "-"),
                             finding.status if finding else "ok", finding.check if finding else "-",
                             _first_line(finding.message) if finding else ""))
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]

        def line(row) -> str:
            return "  ".join([cell.ljust(width) for cell, width in zip(row, widths)] + [row[-1]]).rstrip()

        counts = self.counts()
        total = (f"{len(self.cases)} cases: {counts['ok']} ok, {counts['warning']} with warnings, {counts['error']} "
                 f"with errors; {sum(f.status == 'error' for f in self.dataset_findings)} dataset-level error(s)")
        return "\n".join([line(header), line(["-" * width for width in widths] + ["-" * 6]),
                          *[line(row) for row in rows], total])

    def raise_on_error(self) -> "IntegrityReport":
        """Raise the first error as ``DataIntegrityError`` (saying how many more there are); log warnings."""
        for finding in self.warnings:
            logger.warning("%s", finding.message)
        errors = self.errors
        if errors:
            more = (f"; and {len(errors) - 1} more problem(s) - run `mri-ssl check-data {self.datalist}` for the "
                    f"full report") if len(errors) > 1 else ""
            raise errors[0].as_error(more)
        return self


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""


def _file_keys(entry: Mapping, keys: Sequence[str] | None) -> list[str]:
    if keys is not None:
        return list(keys)
    return [key for key, value in entry.items() if is_image_path(value)]


def _check_splits(content: Mapping, subject_key: str = "subject") -> list[Finding]:
    from mri_ssl.data.splits import DEFAULT_SPLITS, check_disjoint_subjects

    entries = [entry for split in DEFAULT_SPLITS for entry in content.get(split) or []]
    if entries and not all(subject_key in entry for entry in entries):
        return [Finding("datalist", "split_leak", "warning", f"entries without a {subject_key!r} key: cannot check "
                                                             f"that no subject is in two splits")]
    try:
        check_disjoint_subjects(content, subject_key=subject_key)
    except InputError as error:
        return [Finding(error.source, "split_leak", "error", str(error))]
    return []


def _owner(case: CaseReport) -> str:
    subject = f"subject {case.subject}" if case.subject is not None else f"entry {case.index}"
    return f"{subject} ({case.split})"


def _shared_file_finding(cases: Sequence[CaseReport], shown: str, how: str) -> Finding | None:
    """A ``duplicate_file`` finding if ``cases`` (that list one file) span two splits (error) or two subjects
    (warning), else None."""
    owners = list(dict.fromkeys(_owner(case) for case in cases))
    if len(owners) < 2:
        return None
    splits = {case.split for case in cases}
    status = "error" if len(splits) > 1 else "warning"
    what = "two splits (a leak between training and evaluation)" if status == "error" else "two subjects"
    return Finding(shown, "duplicate_file", status, f"{shown}: {how} under {what}: {', '.join(owners)}",
                   sorted(splits))


def check_duplicate_files(work: Sequence[tuple[CaseReport, Mapping[str, str]]],
                          skip_keys: Sequence[str] = ()) -> list[Finding]:
    """Findings for files that appear under two splits or two subjects, by real path and by content.

    ``work`` pairs each case with its files (entry key -> path). A real path listed by cases of different subjects
    or splits is found directly; files with different paths but the same bytes (a copy, a hard link) are found by
    sha256, computed only for files whose size equals another's. Keys in ``skip_keys`` (the label map: an empty
    mask or a shared atlas label is legitimately identical across subjects) are not compared.
    """
    from mri_ssl.trust.files import sha256_file

    by_path: dict[str, list[CaseReport]] = {}
    for case, files in work:
        for key, path in files.items():
            if key not in skip_keys:
                by_path.setdefault(os.path.realpath(path), []).append(case)
    findings = [finding for path, cases in by_path.items()
                if (finding := _shared_file_finding(cases, path, "listed"))]
    by_size: dict[int, list[str]] = {}
    for path in by_path:
        with contextlib.suppress(OSError):  # a missing file is the "exists" check's finding
            by_size.setdefault(os.path.getsize(path), []).append(path)
    by_digest: dict[str, list[str]] = {}
    for paths in by_size.values():
        for path in paths if len(paths) > 1 else []:
            with contextlib.suppress(OSError):
                by_digest.setdefault(sha256_file(path), []).append(path)
    for digest, paths in by_digest.items():
        if len(paths) > 1:
            cases = [case for path in paths for case in by_path[path]]
            finding = _shared_file_finding(cases, " = ".join(paths), f"the same content (sha256 {digest[:12]}...)")
            if finding:
                findings.append(finding)
    return findings


def check_no_split_leak(datalist: str | os.PathLike, subject_key: str = "subject") -> None:
    """Raise ``InputError`` naming the subject and both splits if a subject of the datalist file is in two splits
    (for loaders that check their own files; ``check_data`` reports the same finding in its table). Entries
    without ``subject_key`` cannot be checked and are let through with a logged warning."""
    import json

    for finding in _check_splits(json.loads(Path(datalist).read_text()), subject_key):
        if finding.status == "error":
            raise InputError(datalist, finding.message)
        logger.warning("%s: %s", datalist, finding.message)


def check_data(datalist: str | os.PathLike, splits: Sequence[str] = ("training", "validation", "test"),
               keys: Sequence[str] | None = None, label_key: str | None = "label",
               label_values: Iterable[int] | None = None, spatial_dims: int | None = 3,
               max_bytes: int | None = DEFAULT_MAX_BYTES, require_keys: Sequence[str] | None = None,
               skip_incomplete: bool = False, progress: bool = False) -> IntegrityReport:
    """Check every case of ``splits`` of a decathlon-style datalist; return the ``IntegrityReport``.

    Args:
        datalist: the datalist / manifest JSON (relative paths are relative to its folder).
        splits: which splits' files to read. Subjects are checked across training / validation / test always.
        keys: the entry keys naming files to check; None: every key whose value ends like an image file.
        label_key: the key of the label map; its values must be in ``label_values``, or, when that is None, in the
            datalist's ``labels`` dict (as ``mri-ssl manifest`` writes it) if it has one.
        spatial_dims: the spatial dimensions every file must have (3 for volumes, 2 for photographs; None: any).
        max_bytes: memory cap per file.
        require_keys: keys every checked entry must have (check ``entry``); default: none.
        skip_incomplete: skip entries lacking one of ``require_keys`` instead (segmentation trains on the labelled
            entries of a manifest that also lists unlabelled images).
        progress: a tqdm bar over the cases.

    Call ``.raise_on_error()`` on the result to stop before training, as the bundles do.
    """
    from monai.data import load_decathlon_datalist
    from tqdm.auto import tqdm

    datalist = Path(datalist)
    try:
        content = json.loads(datalist.read_text())
    except (OSError, ValueError) as error:
        raise DataIntegrityError(datalist, "readable", f"cannot read the datalist JSON ({error})") from error
    if label_values is None and label_key and isinstance(content.get("labels"), Mapping):
        label_values = [int(value) for value in content["labels"]]
    report = IntegrityReport(str(datalist), dataset_findings=_check_splits(content))
    # Relative entries are relative to the datalist's own folder, wherever the caller stands: MONAI joins them onto
    # ``base_dir``, which must therefore be absolute (its default, the datalist's folder as given, is relative when
    # the datalist path is, and the join below would then double it).
    base = datalist.resolve().parent
    work = []
    for split in splits:
        if not content.get(split):
            continue
        raw_entries = content[split]
        for index, entry in enumerate(load_decathlon_datalist(datalist, data_list_key=split, base_dir=base)):
            missing = [key for key in require_keys or () if key not in entry]
            if missing and skip_incomplete:
                continue
            # From the JSON as written: MONAI turns a subject id that names an existing folder into a path.
            subject = raw_entries[index].get("subject") if isinstance(raw_entries[index], Mapping) else None
            case = CaseReport(split, index, None if subject is None else str(subject), [])
            if missing:
                case.findings.append(Finding(str(datalist), "entry", "error",
                                             f"{datalist}: {split} entry {index} lacks {missing}; every entry needs "
                                             f"{list(require_keys)}"))
            file_keys = [key for key in _file_keys(entry, keys) if key in entry]
            files = {key: str(entry[key]) if os.path.isabs(str(entry[key])) else str(base / str(entry[key]))
                     for key in file_keys}
            case.files = list(files.values())
            work.append((case, files))
    for case, files in tqdm(work, desc="checking data", unit="case", disable=not progress):
        findings, _ = check_case(files, label_key=label_key, label_values=label_values, spatial_dims=spatial_dims,
                                 max_bytes=max_bytes)
        case.findings.extend(findings)
        report.cases.append(case)
    report.dataset_findings.extend(check_duplicate_files(work, skip_keys=[label_key] if label_key else []))
    if not report.cases:
        needing = f" with {list(require_keys)}" if require_keys else ""
        report.dataset_findings.append(Finding(str(datalist), "entry", "error",
                                               f"{datalist}: no cases{needing} in {' or '.join(splits)}"))
    return report


def write_check_report(manifest: str | os.PathLike, report_path: str | os.PathLike | None = "data_check.json",
                       **options) -> int:
    """``mri-ssl check-data``: run ``check_data`` (``options`` as it takes them), print the table, write the JSON
    report atomically; return the exit status (1 when any error was found, else 0)."""
    from mri_ssl.io.atomic import atomic_write_text

    if not Path(manifest).is_file():
        raise InputError(manifest, "manifest not found")
    report = check_data(manifest, **options)
    print(report.table())
    if report_path:
        atomic_write_text(report_path, json.dumps(report.as_dict(), indent=2) + "\n")
        print(f"wrote {report_path}")
    return 1 if report.errors else 0
