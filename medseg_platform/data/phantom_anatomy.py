"""Anatomy and image formation of the synthetic cardiac short-axis cine MRI phantom.

One patient is a :class:`PatientParams` drawn from a ``numpy.random.Generator``; :func:`synthesize_case`
turns it into one frame (ED or ES) as ``image`` float32 D×H×W in [0, 1] and ``label`` uint8 D×H×W
(0 background, 1 RV, 2 Myo, 3 LV; docs/data.md, 'ACDC layout').

Geometry lives in millimetres: a pixel centre ``(i, j)`` of an ``H×W`` slice sits at
``x = (j - (W-1)/2)·s``, ``y = (i - (H-1)/2)·s`` (``s`` in-plane spacing; ``x`` to the image right,
``y`` down = posterior). Every slice is a painter's-algorithm stack of tissues (body, fat, lungs, liver,
spine, aorta, great vessels, heart), each with its own intensity; the label is a fixed map from tissue
to class. Base-to-apex position ``z`` in [0, 1] scales the heart (LV an ellipsoid cap, RV fading out
before the apex). The image is rendered at twice the resolution, textured, blurred (partial volume),
block-averaged, multiplied by a smooth bias field, given Rician noise, min-max normalised per volume and
passed through a per-patient gamma curve (contrast variation; 0 and 1 stay fixed).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

# tissue index -> (name, label); painting order is the order of the code in _paint_slices, not this table
TISSUES = (
    "air", "muscle", "fat", "lung", "liver", "bone", "vessel_blood", "lv_blood", "myocardium",
    "rv_blood", "rv_wall", "papillary",
)
AIR, MUSCLE, FAT, LUNG, LIVER, BONE, VESSEL, LV_BLOOD, MYO, RV_BLOOD, RV_WALL, PAPILLARY = range(len(TISSUES))
LABEL_OF_TISSUE = np.array([0, 0, 0, 0, 0, 0, 0, 3, 2, 1, 0, 3], dtype=np.uint8)

SUPERSAMPLE = 2  # hi-res pixels per output pixel along each in-plane axis
REFERENCE_SIZE = 128  # at --size 128 the in-plane spacing is 1.2-1.8 mm
FRAMES = ("ED", "ES")


@dataclass(frozen=True)
class PatientParams:
    """Everything random about one patient (both frames share it); lengths in mm, angles in radians.

    ``intensity`` is float64 (len(TISSUES),): the tissue intensities before texture, bias and noise.
    """

    height: int
    width: int
    depth: int
    spacing: tuple[float, float, float]  # (slice thickness, in-plane, in-plane) mm, D/H/W order
    # body and background organs
    body_center: tuple[float, float]
    body_axes: tuple[float, float]
    fat_thickness: float
    lung_r: tuple[float, float, float, float, float]  # cx, cy, a, b, angle (image-left lung)
    lung_l: tuple[float, float, float, float, float]  # cx, cy, a, b, angle (image-right lung)
    liver: tuple[float, float, float, float, float]
    spine: tuple[float, float, float]  # cx, cy, r
    aorta: tuple[float, float, float]
    great_vessel_slices: int  # leading (basal) slices that show a bright outflow vessel (label 0)
    # heart
    heart_center: tuple[float, float]
    heart_tilt: tuple[float, float]  # centre drift from base to apex
    slice_jitter: np.ndarray  # (D, 2) breath-hold in-plane offsets per slice
    rv_angle: float  # direction from the LV centre towards the RV (septum side)
    lv_angle: float  # orientation of the LV ellipse
    ellipticity: float
    wobble: np.ndarray  # (3, 3, 2) angular harmonics k=2,3,4 (amplitude, phase) of endo, epi and RV outlines
    lv_radius: float  # ED basal endocardial mean radius
    wall: float  # ED myocardial thickness
    rv_width: float  # ED basal RV crescent width beyond the epicardium
    rv_span: float  # RV tangential semi-axis relative to the epicardial radius
    rv_end: float  # z at which the RV has vanished
    pericardial_fat: float
    es_cavity: float  # ES endocardial radius factor
    es_rv: float  # ES RV width factor
    papillary: tuple[float, float, float]  # angle offset, radius, radial position factor
    # intensities and image formation
    intensity: np.ndarray
    texture: float
    slice_gain: np.ndarray  # (D,) multiplicative per-slice gain
    blur_sigma: float  # hi-res pixels
    bias_strength: float
    bias_coeffs: np.ndarray  # (5,) coil bias polynomial coefficients (shared by both frames)
    noise: float  # Rician sigma relative to the blood intensity
    gamma: float  # contrast curve applied after normalisation


def _u(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi))


def _sample_intensities(rng: np.random.Generator) -> np.ndarray:
    """Tissue intensities (len(TISSUES),) float64; blood is bright, several background tissues overlap it."""
    blood = _u(rng, 0.7, 1.0)
    myo = blood * _u(rng, 0.2, 0.5)
    value = np.zeros(len(TISSUES))
    value[AIR] = _u(rng, 0.0, 0.03)
    value[MUSCLE] = myo * _u(rng, 0.85, 1.25)
    value[FAT] = blood * _u(rng, 0.8, 1.15)
    value[LUNG] = _u(rng, 0.02, 0.08)
    value[LIVER] = blood * _u(rng, 0.45, 0.8)
    value[BONE] = blood * _u(rng, 0.4, 0.7)
    value[VESSEL] = blood * _u(rng, 0.9, 1.1)
    value[LV_BLOOD] = blood
    value[MYO] = myo
    value[RV_BLOOD] = blood * _u(rng, 0.85, 1.05)
    value[RV_WALL] = myo * _u(rng, 0.9, 1.2)
    value[PAPILLARY] = myo * _u(rng, 1.0, 1.3)
    return value


def sample_patient(rng: np.random.Generator, size: int) -> PatientParams:
    """Draw one patient's anatomy, contrast and acquisition for output slices of about ``size`` px."""
    height = max(32, int(round(size * _u(rng, 0.9, 1.1))))
    width = max(32, int(round(size * _u(rng, 0.9, 1.1))))
    depth = int(rng.integers(6, 11))
    in_plane = _u(rng, 1.2, 1.8) * REFERENCE_SIZE / size
    spacing = (_u(rng, 5.0, 10.0), in_plane, in_plane)
    bx, by = _u(rng, -10, 10), _u(rng, -5, 25)
    ba, bb = _u(rng, 140, 180), _u(rng, 90, 115)
    heart = (_u(rng, 0, 25), _u(rng, -15, 10))
    return PatientParams(
        height=height, width=width, depth=depth, spacing=spacing,
        body_center=(bx, by), body_axes=(ba, bb), fat_thickness=_u(rng, 4, 14),
        lung_r=(heart[0] - _u(rng, 75, 95), by - _u(rng, 10, 30), _u(rng, 40, 55), _u(rng, 65, 85), _u(rng, -0.3, 0.3)),
        lung_l=(heart[0] + _u(rng, 60, 80), by - _u(rng, 5, 25), _u(rng, 35, 50), _u(rng, 60, 80), _u(rng, -0.3, 0.3)),
        liver=(bx - _u(rng, 40, 70), by + _u(rng, 55, 80), _u(rng, 70, 95), _u(rng, 40, 55), _u(rng, -0.4, 0.1)),
        spine=(bx + _u(rng, -8, 8), by + bb - _u(rng, 25, 35), _u(rng, 13, 18)),
        aorta=(bx + _u(rng, 15, 28), by + bb - _u(rng, 52, 62), _u(rng, 9, 13)),
        great_vessel_slices=int(rng.integers(0, 3)),
        heart_center=heart, heart_tilt=(_u(rng, -10, 10), _u(rng, -10, 10)),
        slice_jitter=rng.normal(0.0, 1.5, size=(depth, 2)),
        rv_angle=np.pi + _u(rng, -0.6, 0.4), lv_angle=_u(rng, 0, np.pi), ellipticity=_u(rng, 0.0, 0.18),
        wobble=np.stack([rng.uniform(0.0, 0.05, size=(3, 3)), rng.uniform(0.0, 2 * np.pi, size=(3, 3))], axis=-1),
        lv_radius=_u(rng, 16, 27), wall=_u(rng, 5.5, 9.5), rv_width=_u(rng, 8, 16), rv_span=_u(rng, 1.15, 1.45),
        rv_end=_u(rng, 0.55, 0.85), pericardial_fat=_u(rng, 0.0, 3.0),
        es_cavity=_u(rng, 0.55, 0.78), es_rv=_u(rng, 0.5, 0.8),
        papillary=(_u(rng, 0.5, 0.9), _u(rng, 2.0, 4.0), _u(rng, 0.55, 0.75)),
        intensity=_sample_intensities(rng), texture=_u(rng, 0.03, 0.12),
        slice_gain=rng.normal(1.0, 0.05, size=depth),
        blur_sigma=_u(rng, 0.6, 1.4), bias_strength=_u(rng, 0.15, 0.55),
        bias_coeffs=rng.normal(0.0, 1.0, size=5), noise=_u(rng, 0.03, 0.12), gamma=float(np.exp(_u(rng, -0.35, 0.35))),
    )


# ----------------------------------------------------------------------------------- geometry
def _grid(p: PatientParams, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in mm, ``x`` (1, 1, W·f) and ``y`` (1, H·f, 1), of a grid ``factor``× finer."""
    step = p.spacing[1] / factor
    xs = (np.arange(p.width * factor) - (p.width * factor - 1) / 2.0) * step
    ys = (np.arange(p.height * factor) - (p.height * factor - 1) / 2.0) * step
    return xs[None, None, :], ys[None, :, None]


def _ellipse(x, y, cx, cy, a, b, angle) -> np.ndarray:
    """Normalised squared radius of points w.r.t. a rotated ellipse (<= 1 inside); broadcasts all args."""
    dx, dy = x - cx, y - cy
    c, s = np.cos(angle), np.sin(angle)
    u = dx * c + dy * s
    v = -dx * s + dy * c
    return (u / a) ** 2 + (v / b) ** 2


def _wobble(x, y, cx, cy, harmonics: np.ndarray) -> np.ndarray:
    """Squared radial scale (1 + sum_k a_k cos(k·theta + phi_k))^2 around (cx, cy); ``harmonics`` (3, 2) for k=2,3,4.

    Dividing an :func:`_ellipse` value by it gives a smoothly irregular outline.
    """
    d = (x - cx) + 1j * (y - cy)
    u = d / np.maximum(np.abs(d), 1e-9)  # e^{i theta}
    u2 = u * u
    scale = 1.0
    for a, phi, power in ((*harmonics[0], u2), (*harmonics[1], u2 * u), (*harmonics[2], u2 * u2)):
        scale = scale + a * (power * np.exp(1j * phi)).real  # a cos(k theta + phi)
    return scale**2


def _paint(t: np.ndarray, mask: np.ndarray, tissue: int) -> None:
    """Set ``t`` (D, H', W') to ``tissue`` where ``mask`` (broadcastable to ``t``) is true, in place."""
    t[np.broadcast_to(mask, t.shape)] = tissue


def _col(values) -> np.ndarray:
    """A per-slice sequence (D,) as a (D, 1, 1) array for broadcasting over slices."""
    return np.asarray(values, dtype=np.float64)[:, None, None]


def heart_profile(p: PatientParams, frame: str) -> dict[str, np.ndarray]:
    """Per-slice heart geometry (each (D,) float64, mm): centre, endo/epi radii and RV width.

    ``z`` runs 0 (base) .. 1 (apex). The LV endo- and epicardium follow ellipsoid caps, so both
    shrink toward the apex; the RV width falls to 0 at ``rv_end`` (no RV in apical slices). ES
    contracts the cavities and thickens the wall (the epicardium shrinks only slightly).
    """
    if frame not in FRAMES:
        raise ValueError(f"frame must be one of {FRAMES}, got {frame!r}")
    z = np.linspace(0.0, 1.0, p.depth)
    epi0 = p.lv_radius + p.wall
    epi = epi0 * np.sqrt(np.clip(1.0 - (0.85 * z) ** 2, 0.0, None))
    endo = p.lv_radius * np.sqrt(np.clip(1.0 - (0.97 * z) ** 2, 0.0, None))
    rv_fade = np.clip(1.0 - (z / p.rv_end) ** 2, 0.0, None)
    rv = p.rv_width * rv_fade
    if frame == "ES":
        epi = epi * 0.93
        endo = endo * p.es_cavity
        rv = rv * p.es_rv
    rv = np.where(rv_fade > 0.12, rv, 0.0)
    cx = p.heart_center[0] + p.heart_tilt[0] * z + p.slice_jitter[:, 0]
    cy = p.heart_center[1] + p.heart_tilt[1] * z + p.slice_jitter[:, 1]
    return {"z": z, "cx": cx, "cy": cy, "endo": endo, "epi": epi, "rv": rv}


def _paint_background(p: PatientParams, x: np.ndarray, y: np.ndarray, z: np.ndarray, t: np.ndarray) -> None:
    """Paint body, fat, lungs, liver, spine and aorta into tissue map ``t`` (D, H', W') int8 in place."""
    bx, by = p.body_center
    ba, bb = p.body_axes
    _paint(t, _ellipse(x, y, bx, by, ba, bb, 0.0) <= 1.0, FAT)
    _paint(t, _ellipse(x, y, bx, by, ba - p.fat_thickness, bb - p.fat_thickness, 0.0) <= 1.0, MUSCLE)
    shrink = _col(1.0 - 0.25 * z)  # the lungs recede toward the apex, the liver rises
    for cx, cy, a, b, ang in (p.lung_r, p.lung_l):
        _paint(t, _ellipse(x, y, cx, cy, a * shrink, b * shrink, ang) <= 1.0, LUNG)
    lcx, lcy, la, lb, lang = p.liver
    grow = _col(0.6 + 0.6 * z)
    _paint(t, _ellipse(x, y, lcx, lcy - _col(15.0 * z), la * grow, lb * grow, lang) <= 1.0, LIVER)
    sx, sy, sr = p.spine
    _paint(t, _ellipse(x, y, sx, sy, sr, sr, 0.0) <= 1.0, BONE)
    ax, ay, ar = p.aorta
    _paint(t, _ellipse(x, y, ax, ay, ar, ar, 0.0) <= 1.0, VESSEL)


def _heart_geometry(p: PatientParams, frame: str, x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    """:func:`heart_profile` as (D, 1, 1) arrays plus the epicardial outline scale ``epi_w`` (D, H', W')."""
    g = {name: _col(values) for name, values in heart_profile(p, frame).items()}
    g["epi_w"] = _wobble(x, y, g["cx"], g["cy"], p.wobble[1])
    return g


def _paint_surroundings(p: PatientParams, g: dict, x: np.ndarray, y: np.ndarray, t: np.ndarray) -> None:
    """Mediastinal soft tissue, partial pericardial fat and (basal slices) a bright outflow vessel (label 0)."""
    cx, cy, epi, rv, e = g["cx"], g["cy"], g["epi"], g["rv"], p.ellipticity
    present = epi > 1.0
    _paint(t, (_ellipse(x, y, cx, cy, epi + rv + 6.0, epi + 6.0, p.rv_angle) <= 1.0) & present, MUSCLE)
    fat_side = np.cos(np.arctan2(y - cy, x - cx) - p.rv_angle - np.pi) > 0.3  # free-wall side only
    fat_r = epi + p.pericardial_fat
    _paint(t, (_ellipse(x, y, cx, cy, fat_r * (1 + e), fat_r * (1 - e), p.lv_angle) <= 1.0) & fat_side & present, FAT)
    if p.great_vessel_slices:
        ang = p.rv_angle - 0.9
        gx, gy = cx + (epi + 12.0) * np.cos(ang), cy + (epi + 12.0) * np.sin(ang)
        basal = _col(np.arange(p.depth) < p.great_vessel_slices) > 0
        _paint(t, (_ellipse(x, y, gx, gy, 11.0, 11.0, 0.0) <= 1.0) & basal, VESSEL)


def _paint_rv(p: PatientParams, g: dict, x: np.ndarray, y: np.ndarray, t: np.ndarray) -> None:
    """RV: an ellipse shifted toward the septum side (the LV painted later cuts the crescent out of it).

    Its free wall (2.5 mm, myocardial intensity) is unlabelled, as in ACDC.
    """
    cx, cy, epi, rv = g["cx"], g["cy"], g["epi"], g["rv"]
    off = 0.55 * epi
    rcx, rcy = cx + off * np.cos(p.rv_angle), cy + off * np.sin(p.rv_angle)
    ra, rb = 0.45 * epi + rv, p.rv_span * epi * (0.7 + 0.3 * rv / max(p.rv_width, 1e-6))
    has_rv = rv > 0.0
    wall = 2.5
    rv_w = _wobble(x, y, rcx, rcy, p.wobble[2])
    _paint(t, (_ellipse(x, y, rcx, rcy, ra + wall, rb + wall, p.rv_angle) / rv_w <= 1.0) & has_rv, RV_WALL)
    _paint(t, (_ellipse(x, y, rcx, rcy, ra, rb, p.rv_angle) / rv_w <= 1.0) & has_rv, RV_BLOOD)


def _paint_lv(p: PatientParams, g: dict, x: np.ndarray, y: np.ndarray, t: np.ndarray) -> None:
    """LV myocardium (its septum separates LV and RV), blood pool, and two papillary muscles (labelled LV)."""
    cx, cy, endo, epi, e = g["cx"], g["cy"], g["endo"], g["epi"], p.ellipticity
    epi_q = _ellipse(x, y, cx, cy, epi * (1 + e), epi * (1 - e), p.lv_angle) / g["epi_w"]
    _paint(t, (epi_q <= 1.0) & (epi > 1.0), MYO)
    endo_q = _ellipse(x, y, cx, cy, endo * (1 + e), endo * (1 - e), p.lv_angle) / _wobble(x, y, cx, cy, p.wobble[0])
    min_wall = 2.5  # the cavity never breaks through the myocardium, whatever the two outlines do
    inner = np.clip(epi - min_wall, 0.1, None)
    inner_q = _ellipse(x, y, cx, cy, inner * (1 + e), inner * (1 - e), p.lv_angle) / g["epi_w"]
    _paint(t, (endo_q <= 1.0) & (inner_q <= 1.0) & (endo > 0.5), LV_BLOOD)
    spread, radius, pos = p.papillary
    for side in (-1.0, 1.0):  # on the free-wall side, inside the cavity
        ang = p.rv_angle + np.pi + side * spread
        px, py = cx + pos * endo * np.cos(ang), cy + pos * endo * np.sin(ang)
        _paint(t, (_ellipse(x, y, px, py, radius, radius, 0.0) <= 1.0) & (endo > 3.0 * radius), PAPILLARY)


def _paint_heart(p: PatientParams, frame: str, x: np.ndarray, y: np.ndarray, t: np.ndarray) -> None:
    """Paint the heart and its immediate surroundings into ``t`` (D, H', W') int8 in place."""
    g = _heart_geometry(p, frame, x, y)
    _paint_surroundings(p, g, x, y, t)
    _paint_rv(p, g, x, y, t)
    _paint_lv(p, g, x, y, t)


def tissue_map(p: PatientParams, frame: str, factor: int = 1) -> np.ndarray:
    """Tissue indices (D, H·factor, W·factor) int8 of one frame, sampled at pixel centres."""
    x, y = _grid(p, factor)
    z = np.linspace(0.0, 1.0, p.depth)
    t = np.full((p.depth, p.height * factor, p.width * factor), AIR, dtype=np.int8)
    _paint_background(p, x, y, z, t)
    _paint_heart(p, frame, x, y, t)
    return t


# ----------------------------------------------------------------------------- image formation
def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: tuple[float, ...]) -> np.ndarray:
    """Zero-mean, unit-std smooth random field (float64, ``shape``): white noise blurred by ``sigma`` px."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (field - field.mean()) / max(float(field.std()), 1e-12)


def _bias_field(p: PatientParams) -> np.ndarray:
    """Smooth multiplicative coil bias (D, H, W) float64 around 1: a random low-order 2-D polynomial."""
    x = np.linspace(-1.0, 1.0, p.width)[None, None, :]
    y = np.linspace(-1.0, 1.0, p.height)[None, :, None]
    c = p.bias_coeffs
    z = np.linspace(-1.0, 1.0, p.depth)[:, None, None]
    log_bias = c[0] * x + c[1] * y + 0.5 * c[2] * x * y + 0.5 * c[3] * (x**2 - y**2) + 0.3 * c[4] * z
    log_bias = log_bias / max(float(np.abs(log_bias).max()), 1e-12)
    return np.exp(p.bias_strength * log_bias)


def _downsample(image: np.ndarray, factor: int) -> np.ndarray:
    """Block mean of (D, H·f, W·f) -> (D, H, W)."""
    d, hf, wf = image.shape
    return image.reshape(d, hf // factor, factor, wf // factor, factor).mean(axis=(2, 4))


def _normalise(image: np.ndarray) -> np.ndarray:
    """Min-max normalise a whole volume to [0, 1] float32 (docs/data.md, 'Preprocessing')."""
    lo, hi = float(image.min()), float(image.max())
    out = (image - lo) / max(hi - lo, 1e-12)
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def synthesize_case(p: PatientParams, frame: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Render one frame: ``image`` float32 (D, H, W) in [0, 1] and ``label`` uint8 (D, H, W) in {0..3}.

    ``rng`` draws the texture and noise of this frame (the anatomy is fixed by ``p``).
    """
    f = SUPERSAMPLE
    tissues = tissue_map(p, frame, f)
    label = LABEL_OF_TISSUE[tissue_map(p, frame, 1)]
    base = p.intensity[tissues]
    texture = _smooth_field(rng, tissues.shape, (0.0, 3.0 * f, 3.0 * f))
    hires = base * (1.0 + p.texture * texture) * _col(p.slice_gain)
    hires = ndimage.gaussian_filter(hires, (0.0, p.blur_sigma * f, p.blur_sigma * f), mode="nearest")
    image = np.clip(_downsample(hires, f), 0.0, None) * _bias_field(p)
    sigma = p.noise * p.intensity[LV_BLOOD]
    real = image + rng.normal(0.0, sigma, size=image.shape)
    imag = rng.normal(0.0, sigma, size=image.shape)
    return _normalise(np.hypot(real, imag)) ** np.float32(p.gamma), label
