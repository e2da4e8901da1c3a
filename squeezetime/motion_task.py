"""Camera-motion recognition on clips rendered from real photographs: a real-content task to train SqueezeTime on
and to measure exported (fp32, fp16, int8) artifacts against, with photographs held out for evaluation.

Why this task. Nine classes: static, pan-left/right, tilt-up/down, zoom-in/out, rotate-cw/ccw (the camera's own
motion, as a cinematographer names it). Each class is a distinct global motion field (uniform horizontal or
vertical flow, radial divergence or convergence, rotation, none), so no single frame tells the class: the
network has to compare frames, i.e. use the time axis that SqueezeTime folds into channels. Each direction pair
is the same clip played backwards, so a graph that scrambles the frame order (the c*T + t channel layout) or
rounds the temporal weights too coarsely loses exactly the distinctions the labels are made of. The content is
real (photographs shipped by Debian and PyPI packages, read where the packages install them), and the
evaluation photographs are never seen in training, so accuracy measures generalisation, not memorisation.

How a clip is made. A virtual camera (a 240 x 320 frame, QVGA like many phone clips) looks at a photograph
resized to a 480-pixel short side. Over a virtual video of 64..160 frames the camera pans, tilts, zooms or rolls
at a random speed (with a little acceleration), on top of hand-held shake (smooth random translation, roll and
scale jitter that every class has, "static" included), brightness gain and flicker, and sensor noise. The
project's official test pipeline then picks the frames (``video.sample_indices``: 16 frames, interval 4,
test mode) and the frames are rendered at exactly those indices, resized (``video.resize_short_side``: short
side 256 for a 224 crop), centre-cropped (``video.crop_offsets``) and normalised (``video.normalize``), the same
steps ``video.read_video_clips`` applies to a decoded video. So a clip is what the model (and every exported
artifact, through ``InputSpec.from_clip``) would get from a real video of that camera motion.

Every random choice comes from seeded numpy generators (per held-out clip, a seed derived from the photo, class
and clip number), and the noise from a seeded torch generator, so rendering is reproducible. The photographs
travel to a machine without the packages as a *bundle* (``python -m squeezetime.motion_task bundle DIR``: the
resized pixels as PNG, lossless), read back bit-identically (``photos_dir=DIR`` or ``SQUEEZE_MOTION_PHOTOS``).

Label conventions (camera motion; the scene moves the other way in the frame): pan-right: the camera turns
right, the scene slides left; tilt-up: the camera looks up, the scene slides down; zoom-in: the field of view
narrows, the scene grows; rotate-cw: the camera rolls clockwise (seen from behind it), the scene turns
counter-clockwise in the frame.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from . import video
from .config import SqueezeTimeConfig, get_config
from .errors import SqueezeError

LABEL_FILE = "camera_motion"  # squeezetime/labels/camera_motion.txt
LABELS: Tuple[str, ...] = tuple(video.load_labels(LABEL_FILE))
NUM_CLASSES = len(LABELS)

PHOTO_SHORT_SIDE = 480  # photographs are resized once to this short side (Pillow LANCZOS), then filmed
CAMERA_HW = (240, 320)  # the virtual camera's frame (QVGA); the official pipeline resizes it like any video
VIDEO_FRAMES = (64, 160)  # length of the virtual video (inclusive range); sampling then picks T frames
HELDOUT_EVERY, HELDOUT_OFFSET = 4, 1  # per source, sorted by file name: every 4th photograph from the 2nd is held out
PHOTOS_ENV = "SQUEEZE_MOTION_PHOTOS"  # a bundle folder to read the photographs from instead of the packages
BUNDLE_INDEX = "photos.json"

# Motion magnitudes over the sampled span ((T-1) * interval frames), drawn uniformly per clip.
PAN_PIXELS = (24.0, 120.0)  # pan / tilt: camera-frame pixels (of 320 x 240) the view travels
ZOOM_LOG = (0.12, 0.55)  # zoom: |log| of the scale change (x1.13 .. x1.73)
ROLL_DEGREES = (5.0, 28.0)  # rotate: degrees of roll
ACCELERATION = 0.4  # speed profile u + a*u^2, |a| <= this (monotone on the sampled span)
# Hand-held shake, every class: three sinusoids per channel, amplitudes up to these, 0.01..0.12 cycles/frame.
SHAKE_PIXELS, SHAKE_DEGREES, SHAKE_LOG_SCALE = 2.5, 0.25, 0.004
VIEW_FRACTION = (0.45, 0.85)  # the view's size at mid-clip, as a fraction of the largest view the photo holds
BASE_ROLL_DEGREES = 3.0  # a slightly tilted horizon, |angle| <= this
GAIN, FLICKER, NOISE_SIGMA = (0.8, 1.2), 0.03, (0.0, 4.0)  # brightness gain, per-frame flicker, noise (0..255 units)


# ------------------------------------------------------------------------------------------------ photographs
@dataclass(frozen=True)
class PhotoSource:
    name: str  # "debian:PACKAGE" or "pypi:DISTRIBUTION"
    files: Tuple[str, ...]  # file names inside the source's folder, fixed (a package update adding files changes nothing)
    install: str  # how to get it, for the error message

    def folder(self) -> Optional[Path]:
        kind, pkg = self.name.split(":", 1)
        if kind == "debian":
            return Path("/usr/share/backgrounds/mate/nature") if pkg == "mate-backgrounds" else Path("/usr/share/backgrounds")
        module, sub = {"scikit-learn": ("sklearn", "datasets/images"),
                       "matplotlib": ("matplotlib", "mpl-data/sample_data")}[pkg]
        spec = importlib.util.find_spec(module)  # finds the package without importing it
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(spec.submodule_search_locations[0]) / sub


# Real photographs only (rendered and abstract wallpapers of the same packages are left out).
SOURCES: Tuple[PhotoSource, ...] = (
    PhotoSource("debian:mate-backgrounds", (
        "Aqua.jpg", "Blinds.jpg", "Dune.jpg", "FreshFlower.jpg", "Garden.jpg", "GreenMeadow.jpg", "LadyBird.jpg",
        "RainDrops.jpg", "Storm.jpg", "TwoWings.jpg", "Wood.jpg", "YellowFlower.jpg"),
        "apt-get install mate-backgrounds (bash install.sh does)"),
    PhotoSource("debian:lomiri-wallpapers-16.04", (
        "Bridge_by_Sander_Klootwijk.jpg", "Dragonfly_by_Bolly.jpg", "Picture_0B_by_freespace.jpg",
        "Picture_1A_by_freespace.jpg", "Wine_by_Jakkub_Mede.jpg", "aitzgorri_by_Aitzol_Berasategi.jpg",
        "analogpattern_by_Peter_Nerlich.jpg", "free_by_Peter_Nerlich.jpg", "friends_by_Aitzol_Berasategi.jpg",
        "greentock_by_Peter_Nerlich.jpg", "life_by_Aitzol_Berasategi.jpg", "picosdeeuropa_by_Aitzol_Berasategi.jpg",
        "seeding_by_Clements_Engelhardt.jpg", "sunset_by_Aitzol_Berasategi.jpg"),
        "apt-get install lomiri-wallpapers-16.04 (bash install.sh does)"),
    PhotoSource("pypi:scikit-learn", ("china.jpg", "flower.jpg"), "pip install -r requirements.txt"),
    PhotoSource("pypi:matplotlib", ("grace_hopper.jpg",), "pip install -r requirements.txt"),
)


@dataclass(frozen=True)
class PhotoRef:
    id: str  # "SOURCE/FILE", e.g. "debian:mate-backgrounds/Aqua.jpg"
    source: PhotoSource
    file: str
    heldout: bool

    def path(self) -> Path:
        folder = self.source.folder()
        path = folder / self.file if folder is not None else None
        if path is None or not path.is_file():
            raise SqueezeError(f"photograph {self.file} of {self.source.name} is not installed "
                               f"({path or 'package not found'}); {self.source.install}, or pass a photo bundle "
                               f"(photos_dir / ${PHOTOS_ENV}, made by `python -m squeezetime.motion_task bundle DIR`)")
        return path


def catalog() -> List[PhotoRef]:
    """Every photograph of the task with its split: per source, sorted by file name, every 4th from the 2nd is
    held out (a fixed rule, no randomness: the same photographs on every machine)."""
    refs = []
    for source in SOURCES:
        for i, name in enumerate(sorted(source.files)):
            refs.append(PhotoRef(f"{source.name}/{name}", source, name, i % HELDOUT_EVERY == HELDOUT_OFFSET))
    return refs


def train_photo_ids() -> List[str]:
    return [r.id for r in catalog() if not r.heldout]


def heldout_photo_ids() -> List[str]:
    return [r.id for r in catalog() if r.heldout]


def _ref(photo_id: str) -> PhotoRef:
    for r in catalog():
        if r.id == photo_id:
            return r
    raise SqueezeError(f"unknown photograph {photo_id!r}; the task's photographs are listed by catalog()")


def _photos_dir(photos_dir) -> Optional[Path]:
    value = photos_dir if photos_dir is not None else os.environ.get(PHOTOS_ENV)
    return Path(value) if value else None


def sha256_of(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _resize_photo(path: Path) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("RGB")
        w, h = im.size
        scale = PHOTO_SHORT_SIDE / min(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        if size != (w, h):
            im = im.resize(size, Image.Resampling.LANCZOS)
        return np.asarray(im, dtype=np.uint8).copy()


@lru_cache(maxsize=64)
def _load_cached(photo_id: str, folder: Optional[str]) -> np.ndarray:
    if folder is None:
        return _resize_photo(_ref(photo_id).path())
    index = _read_bundle_index(Path(folder))
    entry = index.get(photo_id)
    if entry is None:
        raise SqueezeError(f"photo bundle {folder} has no {photo_id}; rebuild it with "
                           "`python -m squeezetime.motion_task bundle DIR`")
    from PIL import Image

    with Image.open(Path(folder) / entry["file"]) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    if list(pixels.shape) != [entry["height"], entry["width"], 3]:
        raise SqueezeError(f"photo bundle {folder}: {entry['file']} is {pixels.shape}, the index says "
                           f"{entry['height']}x{entry['width']}; rebuild the bundle")
    return pixels


def load_photo(photo_id: str, photos_dir=None) -> np.ndarray:
    """H x W x 3 uint8 RGB, short side PHOTO_SHORT_SIDE, from the installed package or a bundle (read-only array)."""
    folder = _photos_dir(photos_dir)
    pixels = _load_cached(photo_id, str(folder) if folder is not None else None)
    pixels.setflags(write=False)
    return pixels


def _read_bundle_index(folder: Path) -> Dict[str, Dict]:
    path = folder / BUNDLE_INDEX
    if not path.is_file():
        raise SqueezeError(f"{folder} is not a photo bundle (no {BUNDLE_INDEX}); make one with "
                           "`python -m squeezetime.motion_task bundle DIR`")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("photo_short_side") != PHOTO_SHORT_SIDE:
        raise SqueezeError(f"photo bundle {folder} was made for a {data.get('photo_short_side')}px short side, this "
                           f"code uses {PHOTO_SHORT_SIDE}; rebuild it")
    return {p["id"]: p for p in data["photos"]}


def write_bundle(folder, photo_ids: Optional[Sequence[str]] = None) -> Path:
    """Write the resized photographs as lossless PNGs + photos.json (id, source sha256, size, split), so a machine
    without the packages (the training GPU) reads the same pixels."""
    from PIL import Image

    from squeeze_mobile.atomic import atomic_path, ensure_writable_dir

    folder = ensure_writable_dir(Path(folder))
    refs = [r for r in catalog() if photo_ids is None or r.id in set(photo_ids)]
    entries = []
    for k, ref in enumerate(refs):
        pixels = _resize_photo(ref.path())
        name = f"{k:02d}_{Path(ref.file).stem[:40]}.png"
        with atomic_path(folder / name) as tmp:
            Image.fromarray(pixels).save(tmp, format="PNG")
        entries.append({"id": ref.id, "file": name, "source_sha256": sha256_of(ref.path()), "height": int(pixels.shape[0]),
                        "width": int(pixels.shape[1]), "heldout": ref.heldout})
    with atomic_path(folder / BUNDLE_INDEX) as tmp:
        tmp.write_text(json.dumps({"photo_short_side": PHOTO_SHORT_SIDE, "photos": entries}, indent=1) + "\n",
                       encoding="utf-8")
    return folder


def photo_provenance(photo_ids: Iterable[str], photos_dir=None) -> List[Dict[str, str]]:
    """[{id, source_sha256}] for the record (from the bundle index when reading a bundle)."""
    folder = _photos_dir(photos_dir)
    index = _read_bundle_index(folder) if folder is not None else None
    out = []
    for pid in photo_ids:
        digest = index[pid]["source_sha256"] if index is not None else sha256_of(_ref(pid).path())
        out.append({"id": pid, "source_sha256": digest})
    return out


# ------------------------------------------------------------------------------------------------ clip plans
@dataclass
class ClipPlans:
    """What n clips show: camera pose per sampled frame and the photometric settings (numpy, device-free)."""

    labels: np.ndarray  # n, class index into LABELS
    photo: np.ndarray  # n, index into the photo list the plans were made for
    video_frames: np.ndarray  # n, frames of the virtual video
    indices: np.ndarray  # n x T, the official sampling's frame indices
    poses: np.ndarray  # n x T x 4: view centre x, y (photo pixels), scale (photo px per camera px), roll (radians)
    flip: np.ndarray  # n, mirror the photograph left-right
    gain: np.ndarray  # n x T, brightness multiplier per frame
    noise_sigma: np.ndarray  # n
    noise_seed: np.ndarray  # n, int64

    def __len__(self) -> int:
        return len(self.labels)

    @staticmethod
    def concat(parts: Sequence["ClipPlans"]) -> "ClipPlans":
        return ClipPlans(*[np.concatenate([getattr(p, f) for p in parts]) for f in ClipPlans.__dataclass_fields__])


def _shake(rng: np.random.Generator, frames: np.ndarray, amplitude: float) -> np.ndarray:
    """A smooth random wobble at the given frame indices: three sinusoids, amplitudes up to ``amplitude``."""
    amp = rng.uniform(0.0, amplitude, 3)
    freq = rng.uniform(0.01, 0.12, 3)
    phase = rng.uniform(0.0, 2 * math.pi, 3)
    return (amp[None] * np.sin(2 * math.pi * freq[None] * frames[:, None] + phase[None])).sum(axis=1)


def plan_clip(rng: np.random.Generator, label: int, photo_hw: Tuple[int, int], frames: int = 16, interval: int = 4,
              flip: bool = False, camera_hw: Tuple[int, int] = CAMERA_HW) -> ClipPlans:
    """One clip of class ``label`` on a photo of ``photo_hw``: every draw from ``rng``, the view inside the photo."""
    if not 0 <= label < NUM_CLASSES:
        raise SqueezeError(f"label {label} out of range 0..{NUM_CLASSES - 1}")
    name = LABELS[label]
    H, W = photo_hw
    h, w = camera_hw
    span = (frames - 1) * interval
    n_video = int(rng.integers(max(VIDEO_FRAMES[0], span + 1), VIDEO_FRAMES[1] + 1))
    idx = video.sample_indices(n_video, frames, interval, 1)[0]
    i = idx.astype(np.float64)
    u = (i - (n_video - 1) / 2.0) / span  # time in sampled spans, about -0.5..0.5
    acc = rng.uniform(-ACCELERATION, ACCELERATION)
    prog = u + acc * u * u  # monotone progress along the motion
    tx, ty = np.zeros_like(u), np.zeros_like(u)  # camera-frame pixels, along the camera's own axes
    log_s, roll = np.zeros_like(u), np.zeros_like(u)
    if name in ("pan-left", "pan-right"):
        tx = rng.uniform(*PAN_PIXELS) * prog * (1.0 if name == "pan-right" else -1.0)
    elif name in ("tilt-up", "tilt-down"):
        ty = rng.uniform(*PAN_PIXELS) * prog * (1.0 if name == "tilt-down" else -1.0)  # image y points down
    elif name in ("zoom-in", "zoom-out"):
        log_s = rng.uniform(*ZOOM_LOG) * prog * (-1.0 if name == "zoom-in" else 1.0)  # zoom-in: fewer photo px per view px
    elif name in ("rotate-cw", "rotate-ccw"):
        # with image y pointing down, a growing angle turns the view clockwise on the photo: the camera rolls cw
        roll = math.radians(rng.uniform(*ROLL_DEGREES)) * prog * (1.0 if name == "rotate-cw" else -1.0)
    tx = tx + _shake(rng, i, SHAKE_PIXELS)
    ty = ty + _shake(rng, i, SHAKE_PIXELS)
    log_s = log_s + _shake(rng, i, SHAKE_LOG_SCALE)
    roll = roll + np.radians(_shake(rng, i, SHAKE_DEGREES))
    base_roll = math.radians(rng.uniform(-BASE_ROLL_DEGREES, BASE_ROLL_DEGREES))
    theta = base_roll + roll
    s_rel = np.exp(log_s)  # scale relative to the mid-clip scale s0
    # offsets of the view centre (at s0 = 1): camera-frame translation turned by the base roll
    cb, sb = math.cos(base_roll), math.sin(base_roll)
    off_x, off_y = cb * tx - sb * ty, sb * tx + cb * ty
    # the four view corners of every sampled frame, at s0 = 1, relative to the mid-clip centre
    cu = np.array([-w / 2, w / 2, w / 2, -w / 2])
    cv = np.array([-h / 2, -h / 2, h / 2, h / 2])
    ct, st = np.cos(theta)[:, None], np.sin(theta)[:, None]
    corner_x = off_x[:, None] + s_rel[:, None] * (ct * cu[None] - st * cv[None])
    corner_y = off_y[:, None] + s_rel[:, None] * (st * cu[None] + ct * cv[None])
    ext_x, ext_y = corner_x.max() - corner_x.min(), corner_y.max() - corner_y.min()
    # everything scales with s0: take a random view size, capped so the whole path stays inside the photo
    s_fit = min((W - 1.0) / ext_x, (H - 1.0) / ext_y)
    s0 = min(min(W / w, H / h) * rng.uniform(*VIEW_FRACTION), s_fit)
    lo_x, hi_x = 0.5 - s0 * corner_x.min(), W - 0.5 - s0 * corner_x.max()
    lo_y, hi_y = 0.5 - s0 * corner_y.min(), H - 0.5 - s0 * corner_y.max()
    cx0 = rng.uniform(lo_x, max(lo_x, hi_x))
    cy0 = rng.uniform(lo_y, max(lo_y, hi_y))
    poses = np.stack([cx0 + s0 * off_x, cy0 + s0 * off_y, s0 * s_rel, theta], axis=-1)
    gain = rng.uniform(*GAIN) * (1.0 + _shake(rng, i, FLICKER) / 3.0)
    sigma = rng.uniform(*NOISE_SIGMA)
    seed = int(rng.integers(0, 2**62))
    return ClipPlans(np.array([label]), np.array([0]), np.array([n_video]), idx[None].astype(np.int64), poses[None],
                     np.array([bool(flip)]), gain[None], np.array([sigma]), np.array([seed], dtype=np.int64))


def clip_seed(*parts) -> int:
    """A 63-bit seed from text parts (sha256): the same on every machine and Python (unlike hash())."""
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little") >> 1


# ------------------------------------------------------------------------------------------------ rendering
def _to_device(array: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A small host array on ``device``; to a GPU through pinned memory without a stream sync, so that the CPU
    plans the next batch while the GPU still trains on this one."""
    t = torch.as_tensor(np.ascontiguousarray(array)).to(dtype)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def render_uint8(canvas: torch.Tensor, photo_hw: torch.Tensor, plans: ClipPlans,
                 camera_hw: Tuple[int, int] = CAMERA_HW) -> torch.Tensor:
    """Film the planned clips: n x T x h x w x 3 uint8 camera frames.

    ``canvas``: P x 3 x Hc x Wc uint8 photographs (top-left aligned, padded), on the device to render on;
    ``photo_hw``: P x 2 their real sizes (on the CPU); ``plans.photo`` indexes them. Bilinear sampling (grid_sample), every
    sample inside the photograph (the plans keep the view inside), then gain, noise, rounding.
    """
    device = canvas.device
    n, T = plans.poses.shape[:2]
    h, w = camera_hw
    Hc, Wc = canvas.shape[-2:]
    # camera pixel (u, v), offsets du, dv from the frame centre, sees photo point (x, y) = c + s R(roll) (du, dv);
    # pixel i of the photo spans [i, i+1). As an affine map of affine_grid's normalised output coordinates
    # (du = xo * w/2, dv = yo * h/2) onto grid_sample's normalised input coordinates (gx = 2x/Wc - 1):
    cx, cy, s, th = (plans.poses[..., k].astype(np.float64) for k in range(4))
    a, b = s * np.cos(th), s * np.sin(th)
    row_x = np.stack([a * w / Wc, -b * h / Wc, 2 * cx / Wc - 1], axis=-1)
    width = np.asarray(photo_hw, dtype=np.float64)[np.asarray(plans.photo), 1][:, None, None]
    mirrored = np.stack([-row_x[..., 0], -row_x[..., 1], 2 * width[..., 0] / Wc - 1 - (row_x[..., 2] + 1)], axis=-1)
    row_x = np.where(np.asarray(plans.flip)[:, None, None], mirrored, row_x)  # x -> W - x: a mirrored photograph
    row_y = np.stack([b * w / Hc, a * h / Hc, 2 * cy / Hc - 1], axis=-1)
    theta = _to_device(np.stack([row_x, row_y], axis=-2).reshape(n * T, 2, 3), torch.float32, device)
    grid = F.affine_grid(theta, [n * T, 3, h, w], align_corners=False).reshape(n, T * h, w, 2)
    photo = _to_device(plans.photo, torch.int64, device)
    out = F.grid_sample(canvas[photo].float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    out = out.reshape(n, 3, T, h, w).permute(0, 2, 3, 4, 1)
    out = out * _to_device(plans.gain, torch.float32, device)[:, :, None, None, None]
    for k in range(n):  # per-clip seeded noise: a clip's pixels do not depend on the batch it is rendered in
        g = torch.Generator(device=device).manual_seed(int(plans.noise_seed[k]))
        out[k] += float(plans.noise_sigma[k]) * torch.randn(out.shape[1:], generator=g, device=device)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def preprocess_uint8(frames: torch.Tensor, config: SqueezeTimeConfig, size: Optional[int] = None) -> torch.Tensor:
    """The official single-view pipeline on already-sampled frames (as video.read_video_clips applies it):
    short side resize (scaled with ``size``), centre crop. n x T x h x w x 3 -> n x T x size x size x 3 uint8."""
    size = size or config.input_size
    n, T, h, w, _ = frames.shape
    short = round(config.resize_short * size / config.input_size)
    x = video.resize_short_side(frames.reshape(n * T, h, w, 3), short)
    H2, W2 = x.shape[1:3]
    (y0, x0), = video.crop_offsets(H2, W2, size, "center")
    return x[:, y0:y0 + size, x0:x0 + size].reshape(n, T, size, size, 3).contiguous()


def normalize(clips_uint8: torch.Tensor, config: SqueezeTimeConfig) -> torch.Tensor:
    """video.normalize on any device (that function builds its mean/std on the CPU): n x 3 x T x S x S float32."""
    if clips_uint8.device.type == "cpu":
        return video.normalize(clips_uint8, config.mean, config.std)
    m = torch.tensor(config.mean, dtype=torch.float32, device=clips_uint8.device)
    s = torch.tensor(config.std, dtype=torch.float32, device=clips_uint8.device)
    return ((clips_uint8.float() - m) / s).permute(0, 4, 1, 2, 3).contiguous()


def photo_canvas(photos: Sequence[np.ndarray], device="cpu") -> Tuple[torch.Tensor, torch.Tensor]:
    """P x 3 x Hc x Wc uint8 on ``device`` (top-left aligned, zero padded) and P x 2 sizes (CPU), for render_uint8."""
    Hc = max(p.shape[0] for p in photos)
    Wc = max(p.shape[1] for p in photos)
    canvas = torch.zeros(len(photos), 3, Hc, Wc, dtype=torch.uint8)
    for k, p in enumerate(photos):
        canvas[k, :, :p.shape[0], :p.shape[1]] = torch.from_numpy(np.array(p)).permute(2, 0, 1)
    sizes = torch.tensor([[p.shape[0], p.shape[1]] for p in photos], dtype=torch.int64)
    return canvas.to(device), sizes


def render_clips(photo: np.ndarray, plans: ClipPlans, config: SqueezeTimeConfig, size: Optional[int] = None,
                 chunk: int = 8) -> torch.Tensor:
    """CPU rendering of clips on one photograph through the official preprocessing: n x T x S x S x 3 uint8."""
    canvas, sizes = photo_canvas([photo])
    out = []
    for start in range(0, len(plans), chunk):
        part = ClipPlans(*[getattr(plans, f)[start:start + chunk] for f in ClipPlans.__dataclass_fields__])
        part.photo = np.zeros(len(part), dtype=np.int64)
        out.append(preprocess_uint8(render_uint8(canvas, sizes, part), config, size))
    return torch.cat(out)


# ------------------------------------------------------------------------------------------------ held-out set
@dataclass
class MotionClips:
    """Rendered, preprocessed clips with their labels: uint8 frames (what an app feeds a frames_uint8 graph) and,
    on demand, normalised clips (what the official model and clip/squeezed graphs take)."""

    frames_uint8: torch.Tensor  # N x T x S x S x 3
    labels: np.ndarray  # N
    names: List[str]  # "PHOTO#LABEL#k"
    photo_ids: List[str]  # N, the photograph of each clip
    config: SqueezeTimeConfig

    def __len__(self) -> int:
        return len(self.labels)

    def normalized(self, start: int = 0, stop: Optional[int] = None) -> torch.Tensor:
        """Clips start..stop as the model's input, N x 3 x T x S x S float32 (video.normalize)."""
        return video.normalize(self.frames_uint8[start:stop], self.config.mean, self.config.std)


def heldout_plans(photo_id: str, photo_hw: Tuple[int, int], clips_per_photo: int, frames: int, interval: int) -> ClipPlans:
    """Every class ``clips_per_photo`` times on one held-out photograph, each clip from its own derived seed."""
    parts = []
    for label in range(NUM_CLASSES):
        for k in range(clips_per_photo):
            rng = np.random.default_rng(clip_seed("heldout", photo_id, LABELS[label], k, frames, interval))
            parts.append(plan_clip(rng, label, photo_hw, frames, interval))
    return ClipPlans.concat(parts)


def heldout_clips(clips_per_photo: int = 2, frames: Optional[int] = None, size: Optional[int] = None, config=None,
                  photos_dir=None, photo_ids: Optional[Sequence[str]] = None) -> MotionClips:
    """The held-out evaluation set: every class ``clips_per_photo`` times on each held-out photograph (default all
    8), rendered on the CPU through the official preprocessing at the model's frames and input size.

    ``config``: the model's SqueezeTimeConfig (frame interval, resize, mean/std; default k400's); ``frames`` and
    ``size`` default to it. Deterministic: the same pixels on every call.
    """
    cfg = config if isinstance(config, SqueezeTimeConfig) else get_config(config or "k400")
    frames = frames or cfg.frames
    size = size or cfg.input_size
    ids = list(photo_ids) if photo_ids is not None else heldout_photo_ids()
    train = set(train_photo_ids())
    leaked = [p for p in ids if p in train]
    if leaked:
        raise SqueezeError(f"{', '.join(leaked)} are training photographs; held-out clips come from held-out ones only")
    if clips_per_photo < 1:
        raise SqueezeError("clips_per_photo must be >= 1")
    u8, labels, names, photos = [], [], [], []
    for pid in ids:
        photo = load_photo(pid, photos_dir)
        plans = heldout_plans(pid, photo.shape[:2], clips_per_photo, frames, cfg.frame_interval)
        u8.append(render_clips(photo, plans, cfg, size))
        labels.extend(plans.labels.tolist())
        names.extend(f"{pid}#{LABELS[l]}#{k % clips_per_photo}" for k, l in enumerate(plans.labels))
        photos.extend([pid] * len(plans))
    return MotionClips(torch.cat(u8), np.asarray(labels, dtype=np.int64), names, photos, cfg)


# ------------------------------------------------------------------------------------------------ training data
class TrainingClips:
    """An endless, seeded stream of training batches rendered on ``device`` (a GPU renders a batch in
    milliseconds): balanced classes, random training photograph, mirrored half of the time."""

    def __init__(self, config: SqueezeTimeConfig, seed: int = 0, device="cpu", photos_dir=None,
                 photo_ids: Optional[Sequence[str]] = None, size: Optional[int] = None):
        self.config = config
        self.size = size or config.input_size
        self.device = torch.device(device)
        self.photo_ids = list(photo_ids) if photo_ids is not None else train_photo_ids()
        held = set(heldout_photo_ids())
        if any(p in held for p in self.photo_ids):
            raise SqueezeError("a held-out photograph was given for training")
        photos = [load_photo(p, photos_dir) for p in self.photo_ids]
        self.photo_hw = [p.shape[:2] for p in photos]
        self.canvas, self.sizes = photo_canvas(photos, self.device)
        self.rng = np.random.default_rng(seed)

    def plans(self, n: int) -> ClipPlans:
        labels = self.rng.permutation(np.tile(np.arange(NUM_CLASSES), -(-n // NUM_CLASSES)))[:n]
        parts = []
        for label in labels:
            p = int(self.rng.integers(len(self.photo_ids)))
            plan = plan_clip(self.rng, int(label), self.photo_hw[p], self.config.frames, self.config.frame_interval,
                             flip=bool(self.rng.random() < 0.5))
            plan.photo[:] = p
            parts.append(plan)
        return ClipPlans.concat(parts)

    def batch(self, n: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """n normalised clips (n x 3 x T x S x S float32 on the device) and their labels."""
        plans = self.plans(n)
        u8 = preprocess_uint8(render_uint8(self.canvas, self.sizes, plans), self.config, self.size)
        return normalize(u8, self.config), _to_device(plans.labels, torch.int64, self.device)


# ------------------------------------------------------------------------------------------------ command line
def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m squeezetime.motion_task",
                                description="The camera-motion task's photographs: list them with their split, or "
                                "write a bundle (resized, lossless PNG) for a machine without the packages.")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="every photograph, its split and where it is installed")
    b = sub.add_parser("bundle", help="write the resized photographs + photos.json into DIR")
    b.add_argument("dir")
    args = p.parse_args(argv)
    try:
        if args.cmd == "list":
            for r in catalog():
                try:
                    where = str(r.path())
                except SqueezeError as exc:
                    where = f"MISSING ({exc})"
                print(f"{'held-out' if r.heldout else 'train   '}  {r.id:70s} {where}")
        else:
            folder = write_bundle(args.dir)
            print(f"wrote {len(catalog())} photographs to {folder}")
    except SqueezeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
