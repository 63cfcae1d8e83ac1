"""Read one image file completely and check it, before any voxel array is allocated; failures name the file.

What the usual tools let through: SimpleITK zero-fills a truncated .nii.gz and turns NaN into 0; nibabel raises a
bare ``EOFError`` and misses a flipped byte inside a gzip stream (it never reads to the CRC); a 68-byte .nii.gz whose
header claims 4000^3 voxels makes nibabel try to allocate ~256 GB. One reader per file kind (``read_nifti``,
``read_raster_image`` for PNG/JPEG/TIFF, ``read_dicom``; ``read_image`` picks by file name) checks, in this order and
*before allocating the voxel array*: the file exists and is not empty, the header parses, the declared size fits
``max_bytes``, the file is long enough for what the header declares (.nii) / the whole gzip stream decompresses with
a correct CRC (.nii.gz) / every PNG chunk CRC is right, no axis has size 0, the number of spatial dimensions is what
the caller expects (3 for volumes, 2 for photographs or X-ray DICOM); then after reading: every voxel finite, affine
/ pixel spacing finite and non-degenerate. Every failure is a ``DataIntegrityError`` (an ``InputError``) naming the
file, the check (one of ``CHECKS``) and the offending value. The checks of whole cases and datalists are in
``mri_ssl.data.integrity``.
"""

from __future__ import annotations

import gzip
import io
import math
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from mri_ssl.errors import InputError

# Memory the reader may use for one file (declared voxels x (stored bytes + 4 bytes of float32)). 8 GiB holds a
# 1024^3 float32 volume with room to spare; a header asking for more is almost certainly corrupt.
DEFAULT_MAX_BYTES = 8 * 1024 ** 3
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


def decode_raster(path: str | os.PathLike, mode: str | None = None,
                  max_bytes: int | None = DEFAULT_MAX_BYTES) -> np.ndarray:
    """Decode a PNG (or JPEG / TIFF / BMP) completely with Pillow: ``(H, W)`` or ``(H, W, C)`` in the file's own
    dtype, converted to the Pillow ``mode`` when one is given (``"RGB"``, ``"L"``).

    The one Pillow reader: the data checks (``read_raster_image``) and the photograph loaders
    (``mri_ssl.data.photo``) both call it. The size is checked against ``max_bytes`` before decoding, every PNG chunk
    CRC is verified (``Image.verify``) and the pixels are decoded in full; a truncated file is an error, never
    padded (Pillow's ``LOAD_TRUNCATED_IMAGES`` stays off). Failures are ``DataIntegrityError`` naming the file.
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
            return np.asarray(image.convert(mode) if mode else image)
    except DataIntegrityError:
        raise
    except Image.DecompressionBombError as error:
        raise DataIntegrityError(path, "memory", f"declared size is a decompression bomb ({error})") from error
    except UnidentifiedImageError as error:
        raise DataIntegrityError(path, "readable", "not an image file Pillow can read") from error
    except (OSError, SyntaxError, ValueError, zlib.error) as error:
        raise DataIntegrityError(path, "complete", f"cannot read the whole image ({type(error).__name__}: {error}); "
                                                   f"is the file truncated or damaged?") from error


def read_raster_image(path: str | os.PathLike, spatial_dims: int | None = 2,
                      max_bytes: int | None = DEFAULT_MAX_BYTES) -> CheckedImage:
    """Read a PNG (or JPEG / TIFF / BMP) completely with Pillow (``decode_raster``), checking it; returns
    ``(H, W)`` or ``(H, W, C)`` float32. The affine is the identity (pixel units)."""
    data = decode_raster(path, max_bytes=max_bytes)
    _check_dimensions(path, 2, data.shape[:2], spatial_dims)
    data = data.astype(np.float32)
    _check_finite_voxels(path, data)
    return CheckedImage(Path(path), data, np.eye(4), 2)


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


def decode_dicom(path: str | os.PathLike, spatial_dims: int | None = None, max_bytes: int | None = DEFAULT_MAX_BYTES):
    """``(data set, pixels)`` of one DICOM file read completely with pydicom: float32 ``(rows, columns)`` or
    ``(frames, rows, columns)`` (a trailing colour axis for RGB), rescale slope / intercept applied (modality LUT).

    The one DICOM pixel reader: the data checks (``read_dicom``) and the cardiac series loader
    (``mri_ssl.data.cardiac.dicom_series``) both call it. The declared size is checked against ``max_bytes`` before
    the pixels are decoded, as is the number of spatial dimensions (2, or 3 for a multi-frame file) when
    ``spatial_dims`` is given, and the decoded shape against the header. Failures are ``DataIntegrityError`` naming the
    file.
    """
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
    return dataset, data


def read_dicom(path: str | os.PathLike, spatial_dims: int | None = None,
               max_bytes: int | None = DEFAULT_MAX_BYTES) -> CheckedImage:
    """Read one DICOM file completely (``decode_dicom``), checking it; ``(rows, columns)`` or
    ``(frames, rows, columns)`` float32 (a trailing colour axis for RGB), with its affine from the geometry tags."""
    path = Path(path)
    dataset, data = decode_dicom(path, spatial_dims, max_bytes)
    frames = int(dataset.get("NumberOfFrames", 1) or 1)
    try:
        affine, spacing = _dicom_affine(dataset, frames)
    except Exception as error:
        raise DataIntegrityError(path, "affine", f"malformed geometry attributes ({type(error).__name__}: {error})"
                                 ) from error
    if spacing is not None:
        _check_spacing(path, spacing, "PixelSpacing (mm)")
    _check_affine(path, affine)
    _check_finite_voxels(path, data)
    return CheckedImage(path, data, affine, 3 if frames > 1 else 2)


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
