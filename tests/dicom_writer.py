"""Write small MR DICOM files with pydicom for the scanner and inference tests."""

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"


def write_mr_file(path: Path, patient: str, series_uid: str, pixels: np.ndarray, description: str = "",
                  scanning: str = "GR", te_ms: float = 2.0, tr_ms: float = 5.0, ti_ms: float | None = None,
                  position_mm: float = 0.0, trigger_ms: float | None = None, instance: int = 1,
                  slope: float = 1.0, intercept: float = 0.0) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MR_IMAGE_STORAGE, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.SeriesInstanceUID = "MR", patient, series_uid
    ds.StudyInstanceUID = "1.2.3." + str(abs(hash(patient)) % 10000)
    if description:
        ds.SeriesDescription = description
    ds.ScanningSequence, ds.EchoTime, ds.RepetitionTime = scanning, te_ms, tr_ms
    if ti_ms is not None:
        ds.InversionTime = ti_ms
    if trigger_ms is not None:
        ds.TriggerTime = trigger_ms
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [0.0, 0.0, position_mm]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [1.5, 1.5]
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.ascontiguousarray(pixels.astype(np.uint16)).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_series(folder: Path, patient: str, name: str, positions=1, phases=1, size=48, seed=0, **headers) -> str:
    """A series of ``positions`` slices x ``phases`` trigger times; returns its UID."""
    uid = generate_uid()
    rng = np.random.default_rng(seed)
    instance = 1
    for p in range(positions):
        for t in range(phases):
            pixels = rng.integers(0, 1000, size=(size, size))
            write_mr_file(folder / patient / name / f"{instance:04d}.dcm", patient, uid, pixels,
                          position_mm=8.0 * p, trigger_ms=40.0 * t if phases > 1 else None, instance=instance,
                          **headers)
            instance += 1
    return uid
