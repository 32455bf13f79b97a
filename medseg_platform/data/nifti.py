"""Reading NIfTI image/label pairs the way SSL4MIS preprocessed ACDC (docs/data.md, 'Preprocessing').

Axis convention (exact): nibabel returns a NIfTI array in file storage order ``(X, Y, Z)`` = ``(i, j, k)``
without reorienting; SSL4MIS read the same files with SimpleITK's ``GetArrayFromImage``, which returns
the storage order reversed, ``(Z, Y, X)``. We therefore transpose nibabel's array with axes ``(2, 1, 0)``
so that ``out[z, y, x] == nibabel[x, y, z]``, giving ``(D, H, W) = (Z, Y, X)``, and reverse the header's
voxel sizes ``(dx, dy, dz)`` to the spacing ``(dz, dy, dx)`` mm in ``(D, H, W)`` order. No resampling and
no reorientation to a canonical frame (SSL4MIS did neither).

Intensity: per-volume min-max to ``[0, 1]`` computed in float64, then cast to float32 (SSL4MIS computed
``(x - min) / (max - min)`` and cast to float32). A constant volume (``min == max``) is an error: SSL4MIS
would have written NaNs (0/0), and a constant MRI volume is a broken file, not data.

Also here: finding image/label pairs in a user folder for ``medseg data convert-nifti``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from medseg_platform.errors import DataError

NIFTI_EXTENSIONS = (".nii.gz", ".nii")
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9_-]")


# ---------------------------------------------------------------------------------- file names
def split_nifti_name(path: str | Path) -> tuple[str, str]:
    """``case.nii.gz`` -> ``("case", ".nii.gz")``; ``case.nii`` -> ``("case", ".nii")``.

    Raises :class:`DataError` for a name without a NIfTI extension.
    """
    name = Path(path).name
    for ext in NIFTI_EXTENSIONS:
        if name.lower().endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], name[-len(ext):]
    raise DataError(f"{path}: not a NIfTI file name (expected .nii or .nii.gz; narrow --image-glob)")


def label_path_for(image_path: Path, label_suffix: str) -> Path:
    """The label file of an image: the suffix goes before the extension (``a.nii.gz`` -> ``a_gt.nii.gz``)."""
    stem, ext = split_nifti_name(image_path)
    return image_path.with_name(f"{stem}{label_suffix}{ext}")


def sanitize_case_id(stem: str) -> str:
    """A case id from a file stem: every character outside ``[A-Za-z0-9_-]`` becomes ``_``, and so does a leading ``-``
    (the dataset's lists refuse an id a spreadsheet would read as a formula: ``medseg_platform.data.layout.read_list``;
    the converter wrote ``-scan01`` and the check then refused its dataset, the diff review)."""
    return re.sub(r"^-", "_", _UNSAFE_ID_CHARS.sub("_", stem))


# ------------------------------------------------------------------------------------ headers
@dataclass(frozen=True)
class NiftiHeader:
    """What the header says, in our axis order: ``shape`` (D, H, W) and ``spacing`` (D, H, W) mm."""

    path: Path
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    #: voxel (i, j, k) of the storage order -> world mm, 3x4 rows; None when the header records no orientation
    #: (qform and sform codes 0: nibabel then makes up a diagonal affine, which says nothing about the scanner)
    world: tuple[tuple[float, ...], ...] | None = None


def _load(path: Path):
    """``nibabel.load`` with a one-line :class:`DataError` for a missing or unreadable file.

    nibabel's messages about header fields it repairs on load (zero or negative voxel sizes, ...) are not
    printed: :func:`read_header` checks the stored values itself and names the file.
    """
    import nibabel as nib

    if not path.is_file():
        raise DataError(f"{path}: file is missing (check the raw folder)")
    logger = logging.getLogger("nibabel.global")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for broken files
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{path}: unreadable NIfTI file ({first_line}); re-download or re-export it") from None
    finally:
        logger.setLevel(level)


def _voxels(path: Path, read):
    """``read(image)`` of the file's voxel data, with a one-line :class:`DataError` for a truncated or corrupt file."""
    image = _load(path)
    try:
        return read(image)
    except Exception as exc:  # gzip's EOFError, zlib.error, a short read, ...
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataError(f"{path}: voxel data unreadable ({type(exc).__name__}: {first_line}); the file is truncated or corrupt, "
                        "re-download or re-export it") from None


def _stored_voxel_sizes(path: Path, img) -> list[float]:
    """The header's pixdim[1..3] as stored in the file (nibabel's load sets a zero size to 1 and makes a negative
    one positive, which would hide a broken header)."""
    from nibabel.openers import ImageOpener

    zooms = [float(v) for v in img.header.get_zooms()[:3]]
    if "pixdim" not in img.header:
        return zooms
    with ImageOpener(str(path)) as handle:
        stored = type(img.header).from_fileobj(handle, check=False)
    return [float(v) for v in stored["pixdim"][1:1 + len(zooms)]]


def _clean_spacing(value) -> float:
    """A header voxel size as a Python float; float32 values (NIfTI-1) become the float their shortest
    decimal names (``np.float32(1.4)`` -> ``1.4``, not ``1.399999976158142``)."""
    if isinstance(value, np.float32):
        return float(np.format_float_positional(value, unique=True, trim="-"))
    return float(value)


def xyz_shape(shape: Sequence[int], path: Path) -> tuple[int, int, int]:
    """Storage shape as (X, Y, Z): 2-D files are one slice, trailing singleton dimensions are dropped."""
    dims = list(shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    if len(dims) == 2:
        dims.append(1)
    if len(dims) != 3 or min(dims) < 1:
        raise DataError(f"{path}: expected a 3-D volume, got array shape {tuple(shape)} (export one 3-D volume per file)")
    return int(dims[0]), int(dims[1]), int(dims[2])


def is_time_series(path: str | Path) -> bool:
    """Whether a NIfTI file holds more than one 3-D volume (a 4-D cine or time series, ACDC's ``*_4d.nii.gz``;
    trailing axes of one voxel aside), from its header; one-line :class:`DataError` for an unreadable file."""
    dims = list(_load(Path(path)).shape)
    while len(dims) > 3 and dims[-1] == 1:
        dims.pop()
    return len(dims) > 3


#: millimetres per unit of the header's spatial unit (``xyzt_units``); "unknown" is read as mm, as ITK and SSL4MIS do
MM_PER_UNIT = {"mm": 1.0, "unknown": 1.0, "micron": 1e-3, "meter": 1e3}


def mm_per_unit(img, path: Path) -> float:
    """Millimetres per unit of ``img``'s spatial unit (ITK converts metres and microns to mm the same way)."""
    try:
        unit = img.header.get_xyzt_units()[0] if hasattr(img.header, "get_xyzt_units") else "unknown"
    except KeyError:  # a code nibabel does not name (5-7)
        unit = f"code {int(img.header['xyzt_units']) & 0x07}"
    if unit not in MM_PER_UNIT:
        raise DataError(f"{path}: spatial unit {unit!r} in the header (xyzt_units) is not a length (fix the header)")
    return MM_PER_UNIT[unit]


def voxel_sizes_mm(img, path: Path) -> tuple[float, float, float]:
    """The header's voxel sizes in mm, storage order (x, y, z); a 2-D file's missing slice thickness is 1 mm."""
    zooms = list(img.header.get_zooms())[:3]
    zooms += [1.0] * (3 - len(zooms))
    scale = mm_per_unit(img, path)
    return tuple(float(f"{_clean_spacing(v) * scale:.12g}") for v in zooms)  # 0.9 um -> 0.0009 mm, not 0.0009000000000000001


def world_mm(img, path: Path) -> tuple[tuple[float, ...], ...] | None:
    """The voxel-to-world map in mm (3x4 rows of nibabel's affine, scaled by the header's unit); None when the header
    records no orientation (qform and sform codes both 0)."""
    header = img.header
    if not (hasattr(header, "get_qform") and (int(header["qform_code"]) > 0 or int(header["sform_code"]) > 0)):
        return None
    affine = np.asarray(img.affine, dtype=np.float64)[:3] * mm_per_unit(img, path)
    return tuple(tuple(float(v) for v in row) for row in affine)


def orientation_mismatch(a: Sequence[Sequence[float]] | None, b: Sequence[Sequence[float]] | None) -> str:
    """"" when two voxel-to-world maps (3x4 rows) point every voxel axis (i, j, k) the same way, or when either is None
    (a header without orientation: paired by index); else what differs, e.g. "axis i points the other way" (a flipped
    copy) or "axes i, j point elsewhere" (permuted or rotated).

    Only the directions count: voxels are paired by index, which a flip or a permutation breaks, while scale and
    origin do not (and do differ between valid files: ACDC's released headers keep unit scales in the sform and the
    spacing in the qform, where tools built on ITK write both with the spacing)."""
    if a is None or b is None:
        return ""

    def directions(world) -> np.ndarray:
        linear = np.asarray(world, dtype=np.float64)[:, :3]
        norms = np.linalg.norm(linear, axis=0)
        return linear / np.where(norms > 0, norms, 1.0)

    def axes(names: list[str], where: str) -> list[str]:
        return [f"axes {', '.join(names)} point {where}" if len(names) > 1 else f"axis {names[0]} points {where}"] if names else []

    cosines = np.sum(directions(a) * directions(b), axis=0)
    flipped = [name for name, c in zip("ijk", cosines) if c < -0.99]
    elsewhere = [name for name, c in zip("ijk", cosines) if -0.99 <= c < 0.99]
    return "; ".join(axes(flipped, "the other way") + axes(elsewhere, "elsewhere"))


def read_header(path: str | Path) -> NiftiHeader:
    """Shape, spacing and voxel-to-world map from the header only (cheap: the voxel data is not read).

    ``shape`` = (D, H, W) = storage (Z, Y, X); ``spacing`` = (dz, dy, dx) mm, all positive and finite, converted from
    the header's unit (``xyzt_units``: micron and meter are scaled, unknown is read as mm).
    """
    path = Path(path)
    img = _load(path)
    x, y, z = xyz_shape(img.shape, path)
    if img.get_data_dtype().kind == "c":
        raise DataError(f"{path}: complex voxel values ({img.get_data_dtype()}); export a real-valued (e.g. magnitude) volume")
    if img.get_data_dtype().kind == "V":  # RGB24 and other structured voxels were called a corrupt file when read
        raise DataError(f"{path}: structured voxels (RGB or several channels: {img.get_data_dtype()}); export a "
                        "single-channel volume")
    stored = _stored_voxel_sizes(path, img)
    lengths = (x, y, z)
    # a negative size is taken as its magnitude (nibabel's rule, as before); a zero one only where the axis has one voxel
    if not all(np.isfinite(stored)) or any(v == 0 and n > 1 for v, n in zip(stored, lengths)):
        raise DataError(f"{path}: header voxel sizes (pixdim) must be non-zero numbers, got {tuple(stored)} (fix the header)")
    dx, dy, dz = voxel_sizes_mm(img, path)
    return NiftiHeader(path, (z, y, x), (dz, dy, dx), world_mm(img, path))


def source_grid(path: str | Path) -> dict:
    """What the converters record per case so that ``medseg predict`` writes a NIfTI prediction on the source's grid:
    ``{"affine": source_affine(path), "oriented": bool}``. ``oriented`` is False where the header records no orientation
    (qform and sform codes 0): nibabel then makes up an affine (the x axis negated, the origin at the centre) that
    NIfTI readers do not use (they place such a file by its voxel sizes alone, origin 0), so the affine recorded is the
    voxel sizes' diagonal and the prediction is written without orientation too, as the source is (predictions of such
    a source landed mirrored and shifted in world space, the converter review)."""
    path = Path(path)
    img = _load(path)
    if world_mm(img, path) is None:
        return {"affine": [[float(v) for v in row] for row in np.diag([*voxel_sizes_mm(img, path), 1.0])], "oriented": False}
    return {"affine": source_affine(path), "oriented": True}


def source_affine(path: str | Path) -> list[list[float]]:
    """The file's voxel-to-world affine in mm (4×4, nibabel's ``affine`` for storage order (X, Y, Z), its rotation,
    scales and origin converted from the header's unit, as :func:`world_mm`) as JSON-able rows (a header without
    orientation: :func:`source_grid`).

    The converters record it per case in the manifest, so predictions can be written back to NIfTI on the
    source's grid (``medseg predict``: the (D, H, W) label map transposed to (X, Y, Z) with this affine, units mm):
    they overlay the source in world space also when its header counts in microns or metres.

    Where nibabel's affine (the sform, when the header has one) scales the voxel axes by other sizes than the header's
    voxel sizes while the qform matches them (ACDC's released headers: a unit-scale sform, the spacing in the qform),
    the qform is taken; where neither matches, nibabel's affine with its columns scaled to the voxel sizes
    (:func:`with_voxel_sizes`). A prediction written with it then has the source's voxel size (it had 1 mm voxels).
    """
    path = Path(path)
    img = _load(path)
    zooms = [float(v) for v in img.header.get_zooms()[:3]]
    affine = np.asarray(img.affine, dtype=np.float64)
    if not _scales_match(affine, zooms):
        qform = img.header.get_qform(coded=True)[0] if hasattr(img.header, "get_qform") else None
        affine = (np.asarray(qform, dtype=np.float64) if qform is not None and _scales_match(qform, zooms)
                  else np.asarray(with_voxel_sizes(affine, zooms), dtype=np.float64))
    affine[:3] *= mm_per_unit(img, path)
    return [[float(value) for value in row] for row in affine]


def _scales_match(affine, voxel_sizes: Sequence[float]) -> bool:
    """Whether the affine's voxel axes (its first columns) are as long as ``voxel_sizes`` (storage order)."""
    lengths = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, : len(voxel_sizes)], axis=0)
    return bool(np.allclose(lengths, np.abs(voxel_sizes), rtol=1e-4, atol=0.0))


def with_voxel_sizes(affine, voxel_sizes: Sequence[float]) -> list[list[float]]:
    """``affine`` (4x4, storage order) with each voxel axis's column rescaled to length ``voxel_sizes[i]`` (its
    direction and the origin kept); the affine itself where they already match (or a column is zero)."""
    out = np.asarray(affine, dtype=np.float64).copy()
    if not _scales_match(out, voxel_sizes):
        for i, size in enumerate(voxel_sizes):
            length = float(np.linalg.norm(out[:3, i]))
            if length > 0 and size > 0:
                out[:3, i] *= size / length
    return [[float(value) for value in row] for row in out]


# -------------------------------------------------------------------------------------- arrays
def to_dhw(array_xyz: np.ndarray) -> np.ndarray:
    """nibabel's ``(X, Y, Z)`` array -> ``(D, H, W) = (Z, Y, X)`` C-contiguous (SimpleITK's order)."""
    if array_xyz.ndim == 2:
        array_xyz = array_xyz[:, :, None]
    while array_xyz.ndim > 3 and array_xyz.shape[-1] == 1:
        array_xyz = array_xyz[..., 0]
    return np.ascontiguousarray(np.transpose(array_xyz, (2, 1, 0)))


def minmax_normalise(image: np.ndarray, where: str | Path) -> np.ndarray:
    """Per-volume min-max to ``[0, 1]``: any-dtype D×H×W -> float32 D×H×W (docs/data.md, 'Preprocessing').

    Raises :class:`DataError` naming ``where`` for NaN/inf voxels or a constant volume.
    """
    image = np.asarray(image, dtype=np.float64)
    if not np.isfinite(image).all():
        bad = int(np.count_nonzero(~np.isfinite(image)))
        raise DataError(f"{where}: image has {bad} NaN/inf voxel(s) (fix or remove this case)")
    low, high = float(image.min()), float(image.max())
    if high == low:
        raise DataError(f"{where}: image is constant (every voxel = {low:g}), cannot min-max normalise (remove this case)")
    return ((image - low) / (high - low)).astype(np.float32)


#: A class count up to which a label value 255 outside it is read as a 0/255 mask or an "ignore" value in the error's hint.
FEW_CLASSES = 32


def check_label(label: np.ndarray, num_classes: int, where: str | Path) -> np.ndarray:
    """Integer labels in ``0..num_classes-1`` (any numeric dtype D×H×W) -> uint8 D×H×W.

    Raises :class:`DataError` naming ``where`` for NaN, non-integer or out-of-range values.
    """
    label = np.asarray(label)
    if label.dtype.kind == "f":
        if not np.isfinite(label).all():
            raise DataError(f"{where}: label has NaN/inf values (labels must be integers 0..{num_classes - 1})")
        if not np.array_equal(label, np.round(label)):
            raise DataError(f"{where}: label has non-integer values (labels must be integers 0..{num_classes - 1})")
    elif label.dtype.kind not in "iub":
        raise DataError(f"{where}: label has dtype {label.dtype} (labels must be integers 0..{num_classes - 1})")
    if label.size:
        low, high = label.min(), label.max()
        if low < 0 or high > num_classes - 1:
            bad = np.unique(label[(label < 0) | (label > num_classes - 1)])[:5]
            values = ", ".join(f"{v:g}" for v in bad.astype(np.float64))
            # the count that holds the largest value, where the file looks like a dataset of more classes: at least half
            # of the values 0..max occur in it (a 40-class label converted with the default 4). A negative value or one
            # past uint8 fits no count (the hint named a bare --num-classes there, the converter review); values 0, 4,
            # 255 or a 0/128/255 mask were advised 256 classes, 254 of them empty (the converter and diff reviews)
            present = np.unique(label)
            dense = low >= 0 and high < 256 and 2 * present.size >= int(high) + 1
            hint = f"; a dataset with more classes is converted with convert-nifti --num-classes {int(high) + 1}" if dense else ""
            if not dense and 255 in bad.tolist() and num_classes <= FEW_CLASSES:
                hint = ("; a value 255 is usually a mask saved as 0/255 or an 'ignore' value: map it to its class (e.g. 1) "
                        "or to 0 in the label files first")
            raise DataError(f"{where}: label value(s) {values} outside 0..{num_classes - 1} (fix the label file{hint})")
    return label.astype(np.uint8)


@dataclass(frozen=True)
class LoadedCase:
    """One case ready to write: ``image`` float32 D×H×W in [0,1], ``label`` uint8 D×H×W, ``spacing`` (D,H,W) mm.

    ``intensity_range`` is the raw image's (min, max) before normalisation.
    """

    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float]
    intensity_range: tuple[float, float]


def load_pair(image_path: str | Path, label_path: str | Path, num_classes: int) -> LoadedCase:
    """Read, check and preprocess one image/label pair (docs/data.md, 'Preprocessing'; axes: module doc).

    Errors name the offending file: shape or voxel-size mismatch (from the headers, before reading voxels),
    truncated voxel data, NaN/inf or constant image, label values outside ``0..num_classes-1``.
    """
    image_path, label_path = Path(image_path), Path(label_path)
    image_header = read_header(image_path)
    label_header = read_header(label_path)
    check_same_grid(image_header, label_header)
    raw = to_dhw(np.asarray(_voxels(image_path, lambda img: img.get_fdata(dtype=np.float64))))
    image = minmax_normalise(raw, image_path)
    label = read_label(label_path, num_classes)
    return LoadedCase(image, label, image_header.spacing, (float(raw.min()), float(raw.max())))


def read_label(label_path: str | Path, num_classes: int) -> np.ndarray:
    """A label file's voxels as uint8 D×H×W, checked (:func:`check_label`; a truncated file is a one-line error)."""
    return check_label(to_dhw(_voxels(Path(label_path), lambda img: np.asanyarray(img.dataobj))), num_classes, label_path)


def check_same_grid(image: NiftiHeader, label: NiftiHeader) -> None:
    """Raise :class:`DataError` naming the label file when its (D, H, W) shape or voxel size (along the axes of more
    than one voxel) differs from the image's (the manifest records the image's spacing, so a label on another grid
    would be scored in the wrong units)."""
    if image.shape != label.shape:
        raise DataError(
            f"{label.path}: label shape {image_shape_text(label.shape)} differs from image "
            f"{image.path.name} shape {image_shape_text(image.shape)} (D×H×W; the pair must be voxel-aligned)"
        )
    # along an axis of one voxel the thickness measures nothing (a 2-D label on a one-slice image has none: 1 mm here)
    compared = [i for i, n in enumerate(image.shape) if n > 1]
    if not np.allclose([image.spacing[i] for i in compared], [label.spacing[i] for i in compared], rtol=1e-4, atol=0.0):
        raise DataError(
            f"{label.path}: label voxel size {label.spacing} mm differs from image {image.path.name}'s {image.spacing} "
            "(D, H, W; the pair must be on one grid: fix the label's header or resample it)"
        )
    mismatch = orientation_mismatch(image.world, label.world)
    if mismatch:
        raise DataError(
            f"{label.path}: label is stored in another orientation than image {image.path.name} (by their affines, voxel "
            f"{mismatch}); voxels are paired by index, so reorient the label onto the image's grid (same voxel order) first"
        )


def image_shape_text(shape: Iterable[int]) -> str:
    """``(3, 20, 16)`` -> ``3x20x16``."""
    return "x".join(str(int(s)) for s in shape)


# --------------------------------------------------------------------------- generic discovery
@dataclass(frozen=True)
class NiftiPair:
    """A user case: ``case`` id (sanitised image stem), its ``image`` and ``label`` paths."""

    case: str
    image: Path
    label: Path


def nifti_files_left_out(raw_dir: str | Path, used: Iterable[Path]) -> list[Path]:
    """NIfTI files anywhere under ``raw_dir`` (any depth, ``.nii``/``.nii.gz`` in any letter case) that are not in
    ``used``, sorted: what a conversion whose ``--image-glob`` missed them leaves out."""
    used = {Path(p) for p in used}
    return sorted(p for p in Path(raw_dir).rglob("*") if p.name.lower().endswith(NIFTI_EXTENSIONS) and p not in used and p.is_file())


def _nifti_hint(raw_dir: Path) -> str:
    """What NIfTI files ``raw_dir`` does hold, and a glob that finds them (for a glob that matched nothing)."""
    found = nifti_files_left_out(raw_dir, ())
    if not found:
        return "the folder holds no .nii or .nii.gz file at any depth (point RAW_DIR at the dataset's images and labels)"
    nested = any(len(p.relative_to(raw_dir).parts) > 1 for p in found)
    kinds = {next(p.name[-len(e):] for e in NIFTI_EXTENSIONS if p.name.lower().endswith(e)) for p in found}  # as spelt
    extension = f"*{kinds.pop()}" if len(kinds) == 1 else "*.nii*"  # (Path.glob is case-sensitive)
    glob = ("**/" if nested else "") + extension
    return (f"it holds {len(found)} NIfTI file(s) (e.g. {found[0].relative_to(raw_dir)}): try --image-glob '{glob}'")


def find_nifti_pairs(raw_dir: str | Path, image_glob: str, label_suffix: str) -> list[NiftiPair]:
    """Image/label pairs under ``raw_dir``, sorted by case id.

    Images are the files matching ``image_glob`` (relative to ``raw_dir``; ``**`` recurses). A match whose
    stem ends with ``label_suffix`` is a label and is skipped. Each image needs its label next to it
    (``a.nii.gz`` -> ``a<label_suffix>.nii.gz``). Errors: no images, a missing label, a label without its image (a
    case would be dropped silently), two images whose sanitised stems collide.
    """
    raw_dir = Path(raw_dir)
    if not label_suffix:
        raise DataError("--label-suffix: must not be empty (e.g. --label-suffix _gt)")
    if "/" in label_suffix or "\\" in label_suffix:
        raise DataError(f"--label-suffix {label_suffix!r}: a file-name suffix, not a path (the label lies next to its image)")
    if not image_glob.strip():
        raise DataError("--image-glob '': give a pattern relative to RAW_DIR (e.g. '**/*.nii.gz')")
    if Path(image_glob).is_absolute():
        raise DataError(f"--image-glob {image_glob!r}: must be relative to RAW_DIR (e.g. '**/*.nii.gz')")
    if ".." in Path(image_glob).parts:
        raise DataError(f"--image-glob {image_glob!r}: must stay inside RAW_DIR (no '..'; point RAW_DIR higher instead)")
    try:
        matches = sorted(p for p in raw_dir.glob(image_glob) if p.is_file())
    except ValueError as exc:
        raise DataError(f"--image-glob {image_glob!r}: not a usable pattern ({exc})") from None
    images = [p for p in matches if not split_nifti_name(p)[0].endswith(label_suffix)]
    if not matches:
        raise DataError(f"{raw_dir}: no file matches --image-glob {image_glob!r}; {_nifti_hint(raw_dir)}")
    if not images:
        raise DataError(
            f"{raw_dir}: no image files match --image-glob {image_glob!r} "
            f"({len(matches)} match(es), all labels ending in {label_suffix!r}; check the glob, use '**/' to recurse)"
        )
    by_case: dict[str, NiftiPair] = {}
    for image in images:
        label = label_path_for(image, label_suffix)
        if not label.is_file():
            raise DataError(f"{label}: label file for image {image.name} is missing (add it, or fix --label-suffix)")
        case = sanitize_case_id(split_nifti_name(image)[0])
        if case in by_case:
            raise DataError(
                f"{image}: case id {case!r} is also the id of {by_case[case].image} "
                f"(ids are file stems with characters outside [A-Za-z0-9_-] replaced by '_'; rename one file)"
            )
        by_case[case] = NiftiPair(case, image, label)
    paired = {pair.label for pair in by_case.values()}
    orphans = [p for p in matches if split_nifti_name(p)[0].endswith(label_suffix) and p not in paired]
    if orphans:  # after every image found its label: a label whose image has another extension is named there
        stem, ext = split_nifti_name(orphans[0])
        raise DataError(f"{orphans[0]}: a label without its image ({len(orphans)} such label(s) under {raw_dir}; expected "
                        f"{stem[: -len(label_suffix)]}{ext} beside it): add the image, or move the label out of RAW_DIR")
    return [by_case[c] for c in sorted(by_case)]
