"""Find the datalist a bundle trains on: the user's, or embedded demo data, written on first use and whenever the
parameters they were written with change.

Every bundle calls ``resolve_datalist`` with a ``DemoWriter`` (its modality's demo data: ``brain.demo``,
``cardiac.demo``, ``cardiac.cmr_studies``, ``photo.demo``). The demo folder holds, beside the data, the record of
what wrote them (``DEMO_RECORD_NAME``: writer name, version, parameters and their SHA-256); the data are reused only
while that hash matches, so changed demo parameters never silently reuse stale files. Writing is guarded twice:
runs sharing one folder (an experiment grid) take a file lock, so one writes and the others then find the data
complete; under torch.distributed only rank 0 resolves, and the other ranks wait for its answer (a failure on rank 0
is raised on every rank instead of leaving the others waiting).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import numbers
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

from mri_ssl import distributed
from mri_ssl.data.integrity import check_data
from mri_ssl.errors import InputError
from mri_ssl.io.atomic import exclusive_lock, save_json
from mri_ssl.io.images import check_image_files
from mri_ssl.io.nifti import is_nifti
from mri_ssl.parameters import as_flag
from mri_ssl.physics.simulate import check_map_names

DATALIST_NAME = "datalist.json"
DEMO_LOCK_NAME = ".writing.lock"  # taken while the embedded demo data are checked and (re)written
DEMO_RECORD_NAME = ".demo_parameters.json"  # what wrote the demo data in this folder; written last


@dataclass(frozen=True)
class DemoWriter:
    """One kind of embedded demo data.

    Attributes:
        name: what the data are (recorded beside them; e.g. ``brain_pretrain``).
        write: ``write(folder, **parameters)`` writes the data and ``file_name`` into ``folder``; if it takes a
            ``progress`` argument, the resolver passes its own (progress does not change the data).
        version: change it when the same parameters would now write different data, so older copies are rewritten.
        file_name: the datalist (or manifest) the bundle reads, in ``folder`` and in a user's dataset folder.
    """
    name: str
    write: Callable[..., Any]
    version: str = "1"
    file_name: str = DATALIST_NAME

    def record(self, parameters: Mapping[str, Any]) -> dict:
        """The record of writing with ``parameters``: every argument of ``write`` (defaults filled in, numbers as
        floats so that 2 and 2.0 agree, ``progress`` left out) and their SHA-256. Unknown parameters raise
        ``InputError`` before anything is written."""
        signature = inspect.signature(self.write)
        try:
            bound = signature.bind(None, **parameters)
        except TypeError as error:
            raise InputError(self.name, f"demo data parameters {sorted(parameters)}: {error}") from error
        bound.apply_defaults()
        folder_argument = next(iter(signature.parameters))
        values = {key: _comparable(value) for key, value in bound.arguments.items()
                  if key not in (folder_argument, "progress")}
        text = json.dumps({"demo": self.name, "version": self.version, "parameters": values}, sort_keys=True)
        return {"demo": self.name, "version": self.version, "parameters": values,
                "sha256": hashlib.sha256(text.encode()).hexdigest(), "datalist": self.file_name}


def _comparable(value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return value
    return float(value)


def user_datalist(dataset_dir: str | os.PathLike, file_name: str = DATALIST_NAME) -> Path:
    """``dataset_dir`` itself if it is a file, else ``dataset_dir/file_name``; ``InputError`` if that is missing."""
    path = Path(dataset_dir)
    if path.is_dir():
        path = path / file_name
    if not path.is_file():
        raise InputError(path, f"datalist not found; give a datalist JSON (as `mri-ssl manifest` writes) or a folder "
                               f"holding {file_name}, or leave dataset_dir empty to use the embedded demo data")
    return path


def resolve_datalist(dataset_dir: str | os.PathLike | None, demo_data_dir: str | os.PathLike, demo: DemoWriter,
                     progress: bool = True, **parameters) -> str:
    """Path of the datalist to train on.

    Args:
        dataset_dir: a datalist JSON file, or a folder holding ``demo.file_name``; None or "" means the demo data.
        demo_data_dir: where the demo data are written; reused while the record beside them matches.
        demo: the modality's ``DemoWriter`` (e.g. ``mri_ssl.data.photo.demo.FUNDUS_DEMO``).
        progress: show the writer's progress bar, if it has one.
        parameters: arguments of ``demo.write`` (counts, sizes, seed, ...).
    """
    if dataset_dir not in (None, ""):
        return str(user_datalist(dataset_dir, getattr(demo, "file_name", DATALIST_NAME)))
    if not isinstance(demo, DemoWriter):
        raise InputError("demo", f"expected a DemoWriter (e.g. mri_ssl.data.photo.demo.FUNDUS_DEMO), got {demo!r}")
    record = demo.record(parameters)
    folder = Path(demo_data_dir)
    progress = as_flag(progress, "progress_bar")  # `--progress_bar false` on the command line arrives as text
    if distributed.world_size() == 1:
        _write_unless_current(folder, demo, record, parameters, progress)
    else:
        # Rank 0 checks (and writes) while the others wait for its answer: a broadcast rather than a barrier, so a
        # failure on rank 0 stops every rank with its message instead of leaving them waiting for ever.
        problem = None
        if distributed.rank() == 0:
            try:
                _write_unless_current(folder, demo, record, parameters, progress)
            except Exception as error:  # re-raised below on rank 0, reported on the others
                problem = f"{type(error).__name__}: {error}"
                distributed.broadcast_from_main(problem)
                raise
        problem = distributed.broadcast_from_main(problem)
        if problem is not None:
            raise RuntimeError(f"rank 0 could not write the demo data in {folder}: {problem}")
    return str(folder / demo.file_name)


def _write_unless_current(folder: Path, demo: DemoWriter, record: dict, parameters: Mapping, progress: bool) -> None:
    with exclusive_lock(folder / DEMO_LOCK_NAME):
        if _recorded(folder) == record and (folder / demo.file_name).is_file():
            return
        (folder / DEMO_RECORD_NAME).unlink(missing_ok=True)  # a crash while writing must not leave a valid record
        extra = {"progress": progress} if "progress" in inspect.signature(demo.write).parameters else {}
        demo.write(folder, **parameters, **extra)
        if not (folder / demo.file_name).is_file():
            raise RuntimeError(f"the {demo.name} demo writer did not write {folder / demo.file_name}")
        save_json(record, folder / DEMO_RECORD_NAME)


def _recorded(folder: Path) -> dict | None:
    try:
        return json.loads((folder / DEMO_RECORD_NAME).read_text())
    except (OSError, ValueError):
        return None


def check_datalist(datalist: str | os.PathLike, keys, maps: bool = True,
                   splits: tuple[str, ...] = ("training", "validation"), progress: bool = False) -> int:
    """Read and check every file a datalist names for ``keys`` before training starts; return the case count.

    Runs ``integrity.check_data``: each file is read completely (a truncated gzip stream fails here, naming the
    file, instead of minutes into training) and checked (size, dimensions, finite voxels, geometry); the files of
    one case must agree in shape and affine; qMRI maps must be in their physical ranges; no subject may be in two
    splits. With ``maps=True`` the keys must also be a set of maps simulation can use (pd, r1, r2s at least).
    Raises ``DataIntegrityError`` (an ``InputError``) naming the file and the failed check.
    """
    keys = list(keys)
    if maps:
        check_map_names(keys, source="map_keys")
    report = check_data(datalist, splits=splits, keys=keys, label_key=None, spatial_dims=3, require_keys=keys,
                        progress=as_flag(progress, "progress_bar"))
    report.raise_on_error()
    return len(report.cases)


def check_labelled_datalist(datalist: str | os.PathLike, splits: Sequence[str] = ("training", "validation"),
                            image_key: str = "image", label_key: str | None = "label",
                            label_values: Iterable[int] | None = None, progress: bool = False) -> int:
    """Read and check every image (and label) a datalist names in ``splits`` before training; return the case count.

    The cases are those ``labelled_entries`` gives (what the bundles train on). Each file is read completely and
    checked (``integrity.check_data``). A label must have its image's shape and affine (within
    ``AFFINE_TOLERANCE_MM``) and hold only ``label_values`` (default: the datalist's ``labels``, if any); no subject
    may be in two splits. ``label_key=None`` checks images only (denoising).
    Raises ``DataIntegrityError`` (an ``InputError``) naming the file and the check. A split that is absent or empty
    is skipped, but at least one case must be found.
    """
    datalist = Path(datalist)
    keys = [image_key] + ([label_key] if label_key else [])
    for split in splits:
        labelled_entries(datalist, split, keys)  # an entry without an image is an error naming its index
    report = check_data(datalist, splits=splits, keys=keys, label_key=label_key, label_values=label_values,
                        spatial_dims=3, require_keys=keys, skip_incomplete=True,
                        progress=as_flag(progress, "progress_bar"))
    report.raise_on_error()
    return len(report.cases)


def labelled_entries(datalist: str | os.PathLike, split: str, keys: Sequence[str] = ("image", "label")) -> list[dict]:
    """The entries of ``split`` that have every key in ``keys``, paths resolved (``load_decathlon_datalist``).

    Manifests list images without a label too (``mri-ssl manifest ixi`` keeps them for denoising and counts them as
    ``unlabeled``); segmentation trains and is scored on the labelled ones. An entry with no ``image`` at all is an
    error naming its index. An absent or empty split gives an empty list.
    """
    from monai.data import load_decathlon_datalist

    datalist = Path(datalist)
    if not _read_datalist(datalist).get(split):
        return []
    entries = load_decathlon_datalist(datalist, data_list_key=split)
    for index, entry in enumerate(entries):
        if keys and keys[0] not in entry:
            raise InputError(datalist, f"{split} entry {index} has no {keys[0]!r}; every entry needs one")
    return [entry for entry in entries if all(key in entry for key in keys)]


def _read_datalist(datalist: Path) -> dict:
    try:
        return json.loads(datalist.read_text())
    except (OSError, ValueError) as error:
        raise InputError(datalist, f"cannot read the datalist JSON ({error})") from error


def inference_inputs(input_dir: str | os.PathLike | None, datalist: str | os.PathLike | None = None,
                     split: str = "test", image_key: str = "image", check: bool = True,
                     spatial_dims: int | None = 3) -> list[dict]:
    """The images an inference config runs on, as ``[{"image": path}, ...]``.

    Every NIfTI file in ``input_dir`` (sorted by name); with no ``input_dir`` (None or ""), the ``split`` images of
    ``datalist`` (each image once). Raises ``InputError`` when the folder is missing or holds no NIfTI files. With
    ``check`` every image is read and checked first (``mri_ssl.io.images.check_image_files``), so a damaged file
    stops the run with its name before any inference.
    """
    items = _inference_inputs(input_dir, datalist, split, image_key)
    if check:
        check_image_files([item[image_key] for item in items], spatial_dims=spatial_dims)
    return items


def _inference_inputs(input_dir, datalist, split: str, image_key: str) -> list[dict]:
    from monai.data import load_decathlon_datalist

    if input_dir not in (None, ""):
        folder = Path(input_dir)
        if not folder.is_dir():
            raise InputError(folder, "input folder not found")
        files = sorted(str(path) for path in folder.iterdir() if is_nifti(path))
        if not files:
            raise InputError(folder, "no NIfTI files (.nii or .nii.gz) in the input folder")
        return [{image_key: path} for path in files]
    if datalist in (None, ""):
        raise InputError("input_dir", "give a folder of NIfTI images (input_dir) or a datalist")
    entries = load_decathlon_datalist(str(datalist), data_list_key=split)
    files = list(dict.fromkeys(entry[image_key] for entry in entries))
    if not files:
        raise InputError(datalist, f"no {split} images")
    return [{image_key: path} for path in files]
