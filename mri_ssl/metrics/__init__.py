"""Metrics MONAI lacks: Dice and HD95 in mm with an explicit empty-structure policy, PSNR with an explicit peak, and
per-case / per-site / per-sequence evaluation reports, and the label-free representation probes of
pretraining runs (cross-sequence retrieval; a linear probe on frozen features, of whole images or of lesion /
lesion-free crops; video-text retrieval; several run as one set)."""

from mri_ssl.metrics.classification_probe import ClassificationProbe
from mri_ssl.metrics.denoising import denoising_case_scores, psnr_db
from mri_ssl.metrics.lesion_patch_probe import LesionPatchProbe
from mri_ssl.metrics.probe_set import ProbeSet
from mri_ssl.metrics.report import format_summary_table, summarise_cases, write_report
from mri_ssl.metrics.representation_probe import RepresentationProbe, probe_scores
from mri_ssl.metrics.retrieval_probe import RetrievalProbe
from mri_ssl.metrics.segmentation import (
    STATUS_ABSENT,
    STATUS_FALSE_POSITIVE,
    STATUS_MISSED,
    STATUS_OK,
    StructureScore,
    dice_score,
    hd95_mm,
    max_distance_mm,
    score_structure,
    segmentation_case_scores,
)

__all__ = [
    "ClassificationProbe", "LesionPatchProbe", "ProbeSet", "RepresentationProbe", "RetrievalProbe", "STATUS_ABSENT",
    "STATUS_FALSE_POSITIVE",
    "STATUS_MISSED", "STATUS_OK", "StructureScore",
    "denoising_case_scores", "probe_scores",
    "dice_score", "format_summary_table", "hd95_mm", "max_distance_mm", "psnr_db", "score_structure",
    "segmentation_case_scores", "summarise_cases", "write_report",
]
