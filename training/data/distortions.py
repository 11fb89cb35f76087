"""Families of distortions: each Q-Ground class as several physically different implementations with wide random
parameters, so a model trained on them does not learn one formula's fingerprint.

A family's ``apply(img, strength, rng)`` takes the whole image (float32 (H, W, 3) in [0, 1]; the caller pastes the
result inside a mask) and a strength in [0, 1] (0: the mildest that a person still clearly sees at 256–640 px, 1:
severe) and returns float32 (H, W, 3) clipped to [0, 1]. Strength sets the main parameter linearly inside the family's
range; everything else (angles, trajectories, curve shapes, noise color) is drawn from ``rng``, so the result is
deterministic given the generator's state. ``HELD_OUT`` names one family per class that training never sees (used to
check that the model generalizes to an implementation it was not trained on).

Written from first principles with numpy/scipy/PIL: convolutions are FFT-based on reflect-padded images, sensor physics
(shot noise, clipping, exposure) is simulated in linear light.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import fft, ndimage

from qground.taxonomy import CLASS_NAMES

__all__ = [
    "FAMILIES",
    "HELD_OUT",
    "Family",
    "convolve",
    "families",
    "line_psf",
    "strength_of_severity",
]

Apply = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # Rec. 601 luma weights (on sRGB values)


@dataclass(frozen=True)
class Family:
    """One implementation of one distortion class; ``key`` is ``"cls/name"``."""

    cls: str
    name: str
    apply: Apply

    @property
    def key(self) -> str:
        return f"{self.cls}/{self.name}"


def strength_of_severity(severity: int, rng: np.random.Generator) -> float:
    """Severity 1–3 (mild, moderate, severe) → a strength drawn uniformly in [0, ⅓], [⅓, ⅔] or [⅔, 1]."""
    if severity not in (1, 2, 3):
        raise ValueError(f"severity must be 1, 2 or 3, got {severity}")
    return float(rng.uniform((severity - 1) / 3, severity / 3))


# -- helpers -----------------------------------------------------------------------------------------------------------
def _lerp(lo: float, hi: float, strength: float) -> float:
    return lo + (hi - lo) * float(np.clip(strength, 0.0, 1.0))


def _out(img: np.ndarray) -> np.ndarray:
    return np.clip(img, 0.0, 1.0).astype(np.float32, copy=False)


def _to_linear(srgb: np.ndarray) -> np.ndarray:
    """sRGB (IEC 61966-2-1) → linear light."""
    return np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4).astype(np.float32)


def _to_srgb(linear: np.ndarray) -> np.ndarray:
    """Linear light → sRGB; input clipped to [0, 1] first (a sensor or display saturates)."""
    x = np.clip(linear, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055).astype(np.float32)


def _normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def _odd_pad(psf: np.ndarray, size: int) -> np.ndarray:
    """``psf`` (odd square) centered in a (size, size) array."""
    off = (size - psf.shape[0]) // 2
    out = np.zeros((size, size), dtype=np.float32)
    out[off : off + psf.shape[0], off : off + psf.shape[1]] = psf
    return out


def convolve_many(img: np.ndarray, psfs: list[np.ndarray]) -> list[np.ndarray]:
    """``img`` (H, W, C) convolved with each odd square PSF, sharing one FFT of the reflect-padded image."""
    size = max(p.shape[0] for p in psfs)
    r = size // 2
    h, w = img.shape[:2]
    padded = np.pad(img, ((r, r), (r, r), (0, 0)), mode="reflect")
    shape = (fft.next_fast_len(padded.shape[0] + r, real=True), fft.next_fast_len(padded.shape[1] + r, real=True))
    spectrum = fft.rfft2(padded, s=shape, axes=(0, 1))
    outs = []
    for psf in psfs:
        kernel = fft.rfft2(_odd_pad(psf.astype(np.float32), size), s=shape)
        full = fft.irfft2(spectrum * kernel[..., None], s=shape, axes=(0, 1))
        outs.append(full[2 * r : 2 * r + h, 2 * r : 2 * r + w].astype(np.float32))
    return outs


def convolve(img: np.ndarray, psf: np.ndarray) -> np.ndarray:
    """``img`` (H, W, C) convolved with an odd square PSF (FFT, reflect padding); same shape."""
    return convolve_many(img, [psf])[0]


def _smooth(img: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur over the two image axes (channels untouched)."""
    return ndimage.gaussian_filter(img, (sigma, sigma, 0)[: img.ndim], mode="reflect").astype(np.float32)


def _wide_glow(img: np.ndarray, sigma: float) -> np.ndarray:
    """A wide Gaussian blur computed at reduced resolution (glow is smooth, so nothing is lost) and resized back."""
    f = max(1, int(sigma / 3))
    h, w = img.shape[:2]
    hp, wp = -(-h // f) * f, -(-w // f) * f
    padded = np.pad(img, ((0, hp - h), (0, wp - w), (0, 0)), mode="edge")
    small = padded.reshape(hp // f, f, wp // f, f, -1).mean(axis=(1, 3))
    small = _smooth(small, sigma / f)
    big = ndimage.zoom(small, (f, f, 1), order=1, mode="nearest", grid_mode=True)
    return big[:h, :w].astype(np.float32)


def _disk(radius: float, edge: float = 1.0) -> np.ndarray:
    """Pillbox PSF of ``radius`` px, its rim a linear ramp ``edge`` px wide (1 = anti-aliased, larger = softer)."""
    n = int(np.ceil(radius + edge)) + 1
    yy, xx = np.mgrid[-n : n + 1, -n : n + 1].astype(np.float32)
    psf = np.clip((radius - np.hypot(yy, xx)) / edge + 0.5, 0.0, 1.0)
    return psf / psf.sum()


def _gaussian_psf(sigma: float, size: int) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size].astype(np.float32) - size // 2
    psf = np.exp(-(yy**2 + xx**2) / (2 * sigma**2))
    return psf / psf.sum()


def _splat(points: np.ndarray) -> np.ndarray:
    """A normalized PSF from trajectory samples (N, 2) as (x, y) px, each spread over its 4 nearest pixels with
    bilinear weights (sub-pixel exact); the trajectory is centered on its mean so the image does not shift."""
    pts = points - points.mean(axis=0)
    r = int(np.ceil(np.abs(pts).max())) + 2
    size = 2 * r + 1
    x, y = pts[:, 0] + r, pts[:, 1] + r
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    psf = np.zeros(size * size, dtype=np.float64)
    for dx, dy, wgt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        psf += np.bincount((y0 + dy) * size + x0 + dx, weights=wgt, minlength=size * size)
    psf = psf.reshape(size, size)
    return (psf / psf.sum()).astype(np.float32)


# -- blur: the optics spread every point over a 2-D spot ---------------------------------------------------------------
def blur_gaussian(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian PSF (many small aberrations and diffusion add up to a Gaussian): σ 0.8–6 px."""
    return _out(_smooth(img, _lerp(0.8, 6.0, strength)))


def blur_defocus(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Defocus: geometric optics images a point out of focus as the aperture's disk (pillbox) — radius 1.5–9 px, rim
    anti-aliased or slightly soft (ramp 1–2.5 px wide, from rng)."""
    psf = _disk(_lerp(1.5, 9.0, strength), edge=float(rng.uniform(1.0, 2.5)))
    return _out(convolve(img, psf))


def blur_lens(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """A poor or tilted lens: field-dependent blur growing radially from a random center (field curvature) or toward
    a random side (tilted focal plane), from 35 % to 100 % of a maximum radius 2.5–10 px. The PSF is an aberrated spot:
    a disk plus a Gaussian halo (σ 1–2× the radius, 10–40 % of the energy; spherical aberration). Three PSF sizes are
    convolved and blended per pixel."""
    h, w = img.shape[:2]
    r_max, halo, spread = _lerp(2.5, 10.0, strength), float(rng.uniform(0.1, 0.4)), float(rng.uniform(1.0, 2.0))
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    if rng.random() < 0.5:
        cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
        field = np.hypot(yy - cy, xx - cx)
    else:
        angle = rng.uniform(0, 2 * np.pi)
        field = xx * np.cos(angle) + yy * np.sin(angle)
    field = (field - field.min()) / max(float(np.ptp(field)), 1e-6)
    m = 0.35 + 0.65 * field ** rng.uniform(0.7, 2.0)  # blur radius / r_max
    levels = (0.35, 0.675, 1.0)
    psfs = []
    for level in levels:
        disk = _disk(r_max * level)
        size = max(disk.shape[0], 2 * int(np.ceil(3 * spread * r_max * level)) + 1)
        psfs.append((1 - halo) * _odd_pad(disk, size) + halo * _gaussian_psf(spread * r_max * level, size))
    blurred = convolve_many(img, psfs)
    t = np.clip((m - levels[0]) / (levels[1] - levels[0]), 0, 2)  # 0–1: first pair, 1–2: second pair
    lo = np.where(t[..., None] < 1, blurred[0], blurred[1])
    hi = np.where(t[..., None] < 1, blurred[1], blurred[2])
    frac = np.where(t < 1, t, t - 1)[..., None]
    return _out(lo + (hi - lo) * frac)


def _resize(channel: np.ndarray, size: tuple[int, int], resample: Image.Resampling) -> np.ndarray:
    return np.asarray(Image.fromarray(channel).resize(size, resample), dtype=np.float32)


def blur_resample(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Resolution loss (a small sensor or a digital zoom): shrink by 2–6 (area average or bilinear) and enlarge back
    (bilinear or bicubic)."""
    h, w = img.shape[:2]
    factor = _lerp(2.0, 6.0, strength)
    small = (max(2, round(w / factor)), max(2, round(h / factor)))
    down = (Image.Resampling.BOX, Image.Resampling.BILINEAR)[int(rng.integers(2))]
    up = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC)[int(rng.integers(2))]
    channels = [_resize(_resize(np.ascontiguousarray(img[..., c]), small, down), (w, h), up) for c in range(3)]
    return _out(np.stack(channels, axis=-1))


# -- jitter: the camera moves during the exposure, so the PSF is the 1-D trajectory of a point -------------------------
def line_psf(length: float, angle: float) -> np.ndarray:
    """Straight motion of ``length`` px at ``angle`` radians (0 = along +x, image columns; π/2 = along rows), drawn
    sub-pixel by bilinear splatting; normalized."""
    t = np.linspace(-length / 2, length / 2, max(2, int(length * 4) + 1))
    return _splat(np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1))


def jitter_linear(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Uniform straight camera motion during the exposure: a line PSF 5–35 px long at any angle."""
    return _out(convolve(img, line_psf(_lerp(5.0, 35.0, strength), float(rng.uniform(0, np.pi)))))


def jitter_curved(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Rotating or swinging camera: a quadratic Bézier path 6–35 px long (arc length), any orientation, its control
    point bent sideways by 15–60 % of the chord; speed varies along the path (ease-in/out with 50 % probability), so
    the PSF is brighter where the camera moves slowly."""
    length = _lerp(6.0, 35.0, strength)
    bend = rng.uniform(0.15, 0.6) * rng.choice([-1.0, 1.0])
    t = np.linspace(0.0, 1.0, 400)
    if rng.random() < 0.5:
        t = 0.5 - 0.5 * np.cos(np.pi * t)  # slow at both ends
    p0, p1, p2 = np.array([-0.5, 0.0]), np.array([0.0, bend]), np.array([0.5, 0.0])
    pts = ((1 - t) ** 2)[:, None] * p0 + (2 * (1 - t) * t)[:, None] * p1 + (t**2)[:, None] * p2
    pts *= length / np.hypot(*np.diff(pts, axis=0).T).sum()
    angle = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return _out(convolve(img, _splat(pts @ rot.T)))


def jitter_shake(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Handheld shake: a random trajectory (velocity = smoothed random walk of accelerations plus a random drift,
    48 time steps), scaled to a total path length 6–35 px, sampled uniformly in time (the PSF is heavier where the
    camera lingers)."""
    steps = 48
    accel = ndimage.gaussian_filter1d(rng.standard_normal((steps, 2)), rng.uniform(1.0, 4.0), axis=0)
    velocity = np.cumsum(accel, axis=0) + rng.standard_normal(2) * rng.uniform(0.0, 2.0)
    pos = np.concatenate([np.zeros((1, 2)), np.cumsum(velocity, axis=0)])
    pos *= _lerp(6.0, 35.0, strength) / max(float(np.hypot(*np.diff(pos, axis=0).T).sum()), 1e-6)
    t = np.linspace(0, steps, steps * 16 + 1)
    pts = np.stack([np.interp(t, np.arange(steps + 1), pos[:, i]) for i in range(2)], axis=1)
    return _out(convolve(img, _splat(pts)))


# -- overexposure: too much light, highlights saturate to white --------------------------------------------------------
def over_gain(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Too long an exposure on display values: ×1.6–4 plus an offset 0–0.15 (flare lifting the blacks), clipped."""
    return _out(img * _lerp(1.6, 4.0, strength) + rng.uniform(0.0, 0.15))


def over_clip(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Sensor saturation: gain ×1.5–3.5, then pixels whose brightest channel overflows are pulled toward pure white
    in proportion to the overflow (knee 0.1–0.5; the other channels saturate too, so blown highlights lose their
    color), then hard clipping."""
    y = img * _lerp(1.5, 3.5, strength)
    overflow = np.clip((y.max(axis=-1, keepdims=True) - 1.0) / rng.uniform(0.1, 0.5), 0.0, 1.0)
    return _out(np.minimum(y, 1.0) * (1 - overflow) + overflow)


def over_tone(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """A highlight-pushing tone curve on display values: y = 1 − (1 − x)^k with k 2.2–8 (blacks stay black, the upper
    tones compress into white), optionally mixed 0–40 % toward a global gain of the same brightness (rng)."""
    k = _lerp(2.2, 8.0, strength)
    curve = 1 - (1 - img) ** k
    mix = rng.uniform(0.0, 0.4)
    return _out((1 - mix) * curve + mix * np.minimum(img * (1 + k / 3), 1.0))


def over_ev(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Exposure pushed in linear light: sRGB → linear, × 2^EV with EV 1–3 (per-channel white-balance error ±8 %),
    saturate at 1, back to sRGB — shadows open up gently, highlights clip as on a real sensor."""
    ev = _lerp(1.0, 3.0, strength)
    wb = rng.uniform(0.92, 1.08, size=3).astype(np.float32)
    return _out(_to_srgb(_to_linear(img) * np.float32(2**ev) * wb))


def over_bloom(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Overexposure with bloom/veiling glare: gain ×1.4–2.8, then light above a threshold 0.55–0.8 spills into its
    surroundings as a wide glow (Gaussian σ 1.5–4 % of the image's longer side, amount 0.6–1.5) added on top."""
    y = img * _lerp(1.4, 2.8, strength)
    bright = np.maximum(y - rng.uniform(0.55, 0.8), 0.0)
    sigma = rng.uniform(0.015, 0.04) * max(img.shape[:2])
    return _out(y + rng.uniform(0.6, 1.5) * _wide_glow(bright, sigma))


# -- low light: too little light ---------------------------------------------------------------------------------------
def low_gamma(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """A darkening power curve x^γ, γ 2.5–4.5, no gain (whites stay white, mid-tones and shadows sink; γ starts at 2.5
    because milder curves barely darken a bright scene)."""
    return _out(img ** _lerp(2.5, 4.5, strength))


def low_gain(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Too short an exposure on display values: × 0.4 down to × 0.08 (contrast shrinks with the level), ±5 % per
    channel (color cast from rng)."""
    return _out(img * _lerp(0.4, 0.08, strength) * rng.uniform(0.95, 1.05, size=3).astype(np.float32))


def low_sensor(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """A dark photo from a real sensor: linear light × 0.25 down to × 0.02, then Poisson shot noise (full scale =
    1000–4000 photo-electrons) plus Gaussian read noise (1–4 e⁻), back to sRGB (the noise is strongest in the deep
    shadows)."""
    full_well = rng.uniform(1000, 4000)
    electrons = _to_linear(img) * _lerp(0.25, 0.02, strength) * full_well
    shot = rng.poisson(electrons).astype(np.float32)
    read = _normal(rng, img.shape) * np.float32(rng.uniform(1.0, 4.0))
    return _out(_to_srgb((shot + read) / np.float32(full_well)))


def low_crushed(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Underexposed and crushed by a cheap camera's curve: tones below a black point (0.12–0.35 of the input) become
    0, the rest map onto a dim, low-contrast range whose white is 0.4 down to 0.15, with a 1–1.6 gamma."""
    black = _lerp(0.12, 0.35, strength)
    white = _lerp(0.4, 0.15, strength)
    ramp = np.clip((img - black) / (1 - black), 0.0, 1.0)
    return _out(white * ramp ** rng.uniform(1.0, 1.6))


# -- noise: random per-pixel fluctuations ------------------------------------------------------------------------------
def noise_gaussian(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Additive white Gaussian noise, σ 0.02–0.12, the same σ in each channel (independent samples)."""
    return _out(img + _normal(rng, img.shape) * np.float32(_lerp(0.02, 0.12, strength)))


def noise_poisson(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Photon shot noise: counts ~ Poisson(x · N) with N 100 down to 5 photons per unit of the pixel value, so the
    variance grows with the signal (x/N) and the mean is kept (counted on display values: in linear light the sRGB curve
    would also darken the image, which is low light's signature, not noise's)."""
    photons = _lerp(100.0, 5.0, strength)
    return _out(rng.poisson(img * photons).astype(np.float32) / np.float32(photons))


def _rgb_to_ycbcr(img: np.ndarray) -> np.ndarray:
    y = img @ LUMA
    return np.stack([y, (img[..., 2] - y) * 0.564, (img[..., 0] - y) * 0.713], axis=-1)


def _ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    y, cb, cr = ycc[..., 0], ycc[..., 1], ycc[..., 2]
    r, b = y + cr / 0.713, y + cb / 0.564
    g = (y - LUMA[0] * r - LUMA[2] * b) / LUMA[1]
    return np.stack([r, g, b], axis=-1)


def noise_luma_chroma(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Noise as a camera pipeline leaves it in YCbCr: luminance noise σ 0.02–0.1 (white) plus chroma noise 0.5–1.5× as
    strong, blotchy (low-passed by σ 0.7–2 px and rescaled to its σ)."""
    sigma = _lerp(0.02, 0.1, strength)
    ycc = _rgb_to_ycbcr(img)
    ycc[..., 0] += _normal(rng, img.shape[:2]) * np.float32(sigma)
    blob = rng.uniform(0.7, 2.0)
    chroma = _smooth(_normal(rng, img.shape[:2] + (2,)), blob)
    ycc[..., 1:] += chroma / chroma.std() * np.float32(sigma * rng.uniform(0.5, 1.5))
    return _out(_ycbcr_to_rgb(ycc))


def noise_iso(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """High-ISO sensor noise after demosaicing: white noise low-passed by σ 0.5–1.2 px (the demosaic interpolation
    correlates neighbours), rescaled to unit variance, 30–70 % shared between channels, times a signal-dependent σ
    (shot + read: σ² = a·x + b, σ at mid-gray 0.03–0.13)."""
    sigma = _lerp(0.03, 0.13, strength)
    shot_share = rng.uniform(0.3, 0.9)
    std = sigma * np.sqrt((shot_share * img + (1 - shot_share) * 0.5) / 0.5)
    share = rng.uniform(0.3, 0.7)
    white = np.sqrt(1 - share) * _normal(rng, img.shape) + np.sqrt(share) * _normal(rng, img.shape[:2] + (1,))
    corr = rng.uniform(0.5, 1.2)
    field = _smooth(white, corr)
    return _out(img + std * field / field.std())


def noise_colored(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Independent per-channel Gaussian noise with different σ per channel (a channel's gain differs: blue is often
    the noisiest): mean σ 0.025–0.12, each channel 0.4–1.6× that."""
    sigma = _lerp(0.025, 0.12, strength) * rng.uniform(0.4, 1.6, size=3)
    return _out(img + _normal(rng, img.shape) * sigma.astype(np.float32))


def noise_salt_pepper(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Impulse noise (dead/hot pixels, transmission errors): a fraction 0.01–0.1 of pixels set to 0 or 1 (salt share
    20–80 %), in all channels at once or (50 %) per channel."""
    fraction = _lerp(0.01, 0.1, strength)
    shape = img.shape if rng.random() < 0.5 else img.shape[:2] + (1,)
    hit = rng.random(shape, dtype=np.float32) < fraction
    salt = rng.random(shape, dtype=np.float32) < rng.uniform(0.2, 0.8)
    out = np.where(hit & salt, 1.0, np.where(hit, 0.0, img))
    return _out(out)


def noise_speckle(img: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative (speckle) noise: x · (1 + σ n), σ 0.15–0.6, n Gaussian or uniform (unit variance, rng);
    zero in the blacks, strongest in the brights."""
    sigma = np.float32(_lerp(0.15, 0.6, strength))
    if rng.random() < 0.5:
        n = _normal(rng, img.shape)
    else:
        n = (rng.random(img.shape, dtype=np.float32) - 0.5) * np.float32(np.sqrt(12))
    return _out(img * (1 + sigma * n))


FAMILIES: tuple[Family, ...] = (
    Family("blur", "gaussian", blur_gaussian),
    Family("blur", "defocus", blur_defocus),
    Family("blur", "lens", blur_lens),
    Family("blur", "resample", blur_resample),
    Family("jitter", "linear", jitter_linear),
    Family("jitter", "curved", jitter_curved),
    Family("jitter", "shake", jitter_shake),
    Family("overexposure", "gain", over_gain),
    Family("overexposure", "clip", over_clip),
    Family("overexposure", "tone", over_tone),
    Family("overexposure", "ev", over_ev),
    Family("overexposure", "bloom", over_bloom),
    Family("low light", "gamma", low_gamma),
    Family("low light", "gain", low_gain),
    Family("low light", "sensor", low_sensor),
    Family("low light", "crushed", low_crushed),
    Family("noise", "gaussian", noise_gaussian),
    Family("noise", "poisson", noise_poisson),
    Family("noise", "luma_chroma", noise_luma_chroma),
    Family("noise", "iso", noise_iso),
    Family("noise", "colored", noise_colored),
    Family("noise", "salt_pepper", noise_salt_pepper),
    Family("noise", "speckle", noise_speckle),
)

# One family per class, never trained on: each is a physically distinct variant whose ingredients training still
# covers (disk and Gaussian PSFs; straight and curved paths; gain and clipping; gain and gamma; signal-dependent noise).
HELD_OUT: frozenset[str] = frozenset(
    {"blur/lens", "jitter/shake", "overexposure/bloom", "low light/crushed", "noise/speckle"}
)


def families(cls: str) -> tuple[Family, ...]:
    """The families of one class (``qground.taxonomy.CLASS_NAMES``), in ``FAMILIES`` order."""
    if cls not in CLASS_NAMES:
        raise ValueError(f"unknown distortion class {cls!r}")
    return tuple(f for f in FAMILIES if f.cls == cls)
