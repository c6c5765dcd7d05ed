"""Faces: the cropped-aligned face images, whose features move with the AU intensities."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from common.data.affwild2 import AU_NAMES
from common.data.synthetic.config import CorpusConfig
from common.data.synthetic.latent import Subject, markov_runs, smooth_process


def _ramp(x: np.ndarray, edge: float) -> np.ndarray:
    """A one-pixel-wide soft step: 0 for x < -edge/2, 1 for x > edge/2."""
    return np.clip(0.5 + x / edge, 0.0, 1.0)


def _segment_distance(u, v, x0, y0, x1, y1):
    dx, dy = x1 - x0, y1 - y0
    t = np.clip(((u - x0) * dx + (v - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.hypot(u - x0 - t * dx, v - y0 - t * dy)


def _col(a: np.ndarray) -> np.ndarray:
    """A per-frame scalar (B,) -> (B, 1, 1), broadcastable over the image grid."""
    return a[:, None, None]


class _Canvas:
    """n frames being painted, with the face coordinates of every pixel.

    u, v: the head's frame (rolled, shifted and scaled by the pose); uf: u with the features slid
    sideways as the head turns (yaw); X, Y: the image grid in [-1, 1]; edge: the width of a
    one-pixel soft edge in face units.
    """

    def __init__(self, n: int, pose: dict, size: int, background: np.ndarray):
        g = np.linspace(-1, 1, size, dtype=np.float32)
        self.X, self.Y = g[None, None, :], g[None, :, None]
        c, sn = np.cos(_col(pose["roll"])), np.sin(_col(pose["roll"]))
        scale = _col(pose["scale"])
        Xs, Ys = (self.X - _col(pose["tx"])) / scale, (self.Y - _col(pose["ty"])) / scale
        self.u = c * Xs + sn * Ys
        self.v = -sn * Xs + c * Ys
        self.yaw = _col(pose["yaw"])
        self.uf = self.u - 0.18 * self.yaw           # features slide sideways when the head turns
        self.edge = 2.0 / size * 1.2 / scale
        self.img = np.empty((n, size, size, 3), np.float32)
        self.img[:] = background * (0.85 + 0.15 * self.Y[..., None])
        # Thin strokes (brows, wrinkles, folds) are drawn from segment distances over the image
        # rows they can reach only: a stroke of half-width w around a segment between heights y0
        # and y1 has alpha exactly 0 wherever |v - [y0, y1]| > w + edge / 2, so skipping those
        # rows changes no pixel and saves ~20 full-frame distance passes per frame.
        self.v_lo, self.v_hi = self.v.min(axis=(0, 2)), self.v.max(axis=(0, 2))   # v range of each row
        self.reach_edge = float(np.max(self.edge))

    def paint(self, alpha, colour, rows=slice(None)):
        """Alpha-blend `colour` in place, only over the rows the layer touches: most layers (brows,
        eyes, wrinkles) cover a thin band, and blending whole frames dominated the run time."""
        target = self.img[:, rows]
        alpha = np.broadcast_to(alpha, target.shape[:3])
        touched = np.flatnonzero(alpha.any(axis=(0, 2)))
        if touched.size == 0:
            return
        band = slice(touched[0], touched[-1] + 1)
        region = target[:, band]
        region += alpha[:, band, :, None] * (np.asarray(colour, np.float32) - region)

    def rows_near(self, y0, y1, width) -> slice:
        lo, hi = float(np.min([np.min(y0), np.min(y1)])), float(np.max([np.max(y0), np.max(y1)]))
        hit = np.flatnonzero((self.v_hi >= lo - width - self.reach_edge) & (self.v_lo <= hi + width + self.reach_edge))
        return slice(hit[0], hit[-1] + 1) if hit.size else slice(0, 0)

    def stroke(self, x0, y0, x1, y1, width):
        """(rows, ramp): the rows a stroke reaches and its soft coverage there."""
        rows = self.rows_near(y0, y1, width)
        d = _segment_distance(self.uf[:, rows], self.v[:, rows], x0, y0, x1, y1)
        return rows, _ramp(width - d, self.edge)


def _paint_head(cv: _Canvas, s: Subject, A: dict) -> np.ndarray:
    """Hair, then the skin of the face (the jaw drops with AU26); returns the face's coverage."""
    u, v, edge = cv.u, cv.v, cv.edge
    face_w = s.face_w * (1 - 0.15 * np.abs(cv.yaw))
    face = _ramp(1 - (u / face_w) ** 2 - ((v - 0.03 * A["AU26"]) / s.face_h) ** 2, edge * 2)
    cv.paint(_ramp(1 - (u / (s.face_w * 1.12)) ** 2 - ((v + 0.12) / (s.face_h * 0.98)) ** 2, edge)
             * (v < -0.25), s.hair)                                                   # hair
    cv.paint(face, s.skin)
    return face


def _paint_cheeks(cv: _Canvas, s: Subject, A: dict, face: np.ndarray) -> None:
    """AU6 raises and rounds the cheeks: a brighter, ruddier patch under each eye."""
    for side in (-1, 1):
        blob = np.exp(-(((cv.uf - side * 0.36) / 0.13) ** 2 + ((cv.v - 0.12 + 0.04 * A["AU6"]) / 0.09) ** 2))
        cv.paint(face * blob * 0.8 * A["AU6"], np.clip(s.skin * [1.15, 0.9, 0.85] + 0.08, 0, 1))


def _paint_brows(cv: _Canvas, s: Subject, A: dict, face: np.ndarray) -> None:
    """AU1 raises the inner end, AU2 the outer end, AU4 lowers and draws them together."""
    for side in (-1, 1):
        x_in = side * (0.10 + 0.02 - 0.05 * A["AU4"])
        y_in = s.brow_y - 0.13 * A["AU1"] + 0.12 * A["AU4"]
        y_out = s.brow_y - 0.02 - 0.13 * A["AU2"] + 0.03 * A["AU4"]
        rows, line = cv.stroke(x_in, y_in, side * 0.50, y_out, 0.035)
        cv.paint(face[:, rows] * line, s.hair * 0.8, rows)


def _paint_wrinkles(cv: _Canvas, s: Subject, A: dict, face: np.ndarray) -> None:
    """The wrinkles FACS lists as appearance changes: AU1 furrows the centre of the forehead, AU2
    its sides, AU4 cuts vertical lines between the brows, AU6 adds crow's feet at the eye corners."""
    wrinkle = s.skin * 0.55
    for k in range(2):
        y = s.brow_y - 0.16 - 0.08 * k
        for x0, x1, name in ((-0.18, 0.18, "AU1"), (-0.52, -0.26, "AU2"), (0.26, 0.52, "AU2")):
            rows, line = cv.stroke(x0, y, x1, y, 0.016)
            cv.paint(face[:, rows] * line * 0.9 * A[name], wrinkle, rows)
    for side in (-1, 1):
        rows, line = cv.stroke(side * 0.05, s.brow_y - 0.03, side * 0.04, s.brow_y + 0.10, 0.02)
        cv.paint(face[:, rows] * line * 0.95 * A["AU4"], wrinkle, rows)
        for dy in (-0.05, 0.0, 0.05):
            rows, line = cv.stroke(side * (s.eye_dx + 0.14), s.eye_y + dy, side * (s.eye_dx + 0.24), s.eye_y + 1.6 * dy,
                                   0.014)
            cv.paint(face[:, rows] * line * 0.8 * A["AU6"], wrinkle, rows)


def _paint_eyes(cv: _Canvas, s: Subject, A: dict, face: np.ndarray, blink: np.ndarray) -> None:
    """AU7 tightens the lids, AU6 narrows them from below; `blink` (per frame) closes them."""
    opening = np.clip(0.075 * (1 - 0.55 * A["AU7"] - 0.3 * A["AU6"]) * _col(blink), 0.006, None)
    for side in (-1, 1):
        ex = cv.uf - side * s.eye_dx
        eye = _ramp(1 - (ex / 0.12) ** 2 - ((cv.v - s.eye_y) / opening) ** 2, cv.edge)
        cv.paint(face * eye, (0.92, 0.92, 0.9))
        cv.paint(face * eye * _ramp(0.045 - np.hypot(ex, cv.v - s.eye_y), cv.edge), (0.08, 0.06, 0.05))


def _paint_nose(cv: _Canvas, s: Subject, A: dict, face: np.ndarray) -> None:
    """The nose, and AU10's raised upper lip deepening the nasolabial folds."""
    rows, line = cv.stroke(0.0, -0.08, 0.0, 0.22, 0.02)
    cv.paint(face[:, rows] * line * 0.35, s.skin * 0.6, rows)
    for side in (-1, 1):
        rows, line = cv.stroke(side * 0.12, 0.2, side * 0.27, 0.44, 0.02)
        cv.paint(face[:, rows] * line * (0.15 + 0.75 * A["AU10"]), s.skin * 0.5, rows)


def _paint_mouth(cv: _Canvas, s: Subject, A: dict, face: np.ndarray) -> None:
    """AU12 lifts the corners, AU15 pulls them down, AU23 narrows, AU24 presses the lips thin,
    AU25 parts them, AU26 drops the jaw."""
    v, edge = cv.v, cv.edge
    w = 0.27 * (1 + 0.3 * A["AU12"] - 0.22 * A["AU23"] - 0.08 * A["AU24"])
    rel = np.clip(cv.uf / w, -1.5, 1.5)
    inside = np.clip(1 - rel ** 2, 0, None)
    centre = s.mouth_y + 0.03 * A["AU26"] + (0.16 * A["AU15"] - 0.22 * A["AU12"]) * rel ** 2
    gap = (0.01 + 0.09 * A["AU25"] + 0.14 * A["AU26"]) * (1 - 0.8 * A["AU24"]) * np.sqrt(inside)
    lip = s.lip_t * (1 - 0.6 * A["AU24"]) * np.sqrt(inside) + 0.004
    upper_top = centre - gap / 2 - lip - 0.035 * A["AU10"] * inside
    lower_bot = centre + gap / 2 + lip + 0.05 * A["AU26"] * inside
    mouth_area = face * (inside > 0)
    cv.paint(mouth_area * _ramp(v - upper_top, edge) * _ramp(lower_bot - v, edge), s.lips)
    cv.paint(mouth_area * _ramp(gap / 2 - np.abs(v - centre), edge), (0.12, 0.04, 0.05))


def _add_nuisance(cv: _Canvas, s: Subject, pose: dict, rng) -> None:
    """Directional lighting, occluders, motion blur, sensor noise (in this order: rng draws too)."""
    img, X, Y = cv.img, cv.X, cv.Y
    ang = _col(pose["light_dir"])
    img *= _col(pose["light"])[..., None] * (1 + 0.35 * (np.cos(ang) * X + np.sin(ang) * Y))[..., None]
    for i in np.flatnonzero(pose["occlude"]):
        x0, y0 = rng.uniform(-0.8, 0.3), rng.uniform(-0.4, 0.5)
        box = (X[0] > x0) & (X[0] < x0 + rng.uniform(0.4, 0.8)) & (Y[0] > y0) & (Y[0] < y0 + rng.uniform(0.3, 0.6))
        img[i][box] = s.skin * rng.uniform(0.6, 0.9)
    for i in np.flatnonzero(pose["blur"]):
        k = rng.integers(2, 4)
        axis = int(rng.integers(0, 2))
        img[i] = np.mean([np.roll(img[i], o, axis=axis) for o in range(-k, k + 1)], axis=0)
    img += rng.normal(0, 0.015, img.shape).astype(np.float32)


def render_faces(s: Subject, au: np.ndarray, pose: dict, size: int, rng) -> np.ndarray:
    """Render B faces (B, size, size, 3) uint8 whose features move with the AU intensities (B, 12).

    pose holds per-frame arrays: roll, yaw, tx, ty, scale, light, light_dir, occlude, blur, blink.
    The layers are painted back to front, then the nuisance goes over the whole frame.
    """
    A = {name: au[:, i, None, None] for i, name in enumerate(AU_NAMES)}
    cv = _Canvas(au.shape[0], pose, size, s.background)
    face = _paint_head(cv, s, A)
    _paint_cheeks(cv, s, A, face)
    _paint_brows(cv, s, A, face)
    _paint_wrinkles(cv, s, A, face)
    _paint_eyes(cv, s, A, face, pose["blink"])
    _paint_nose(cv, s, A, face)
    _paint_mouth(cv, s, A, face)
    _add_nuisance(cv, s, pose, rng)
    return (np.clip(cv.img, 0, 1) * 255 + 0.5).astype(np.uint8)


def random_pose(rng, n: int, cfg: CorpusConfig, still: bool = False) -> dict:
    """Per-frame head pose and nuisance; smooth over time for video, independent for stills."""
    if still:
        walk = lambda scale: rng.normal(0, scale, n).astype(np.float32)  # noqa: E731
    else:
        walk = lambda scale: scale * smooth_process(rng, n, 1.5, cfg.fps)  # noqa: E731
    blink = np.ones(n, np.float32)
    if not still:
        starts = np.flatnonzero(rng.random(n) < 0.25 / cfg.fps)   # ~one blink every 4 s
        for t in starts:
            blink[t:t + max(1, cfg.fps // 10)] = 0.1
    return {
        "roll": walk(0.06), "yaw": np.clip(walk(0.25), -0.7, 0.7), "tx": walk(0.025), "ty": walk(0.025),
        "scale": 1 + walk(0.03), "light": np.float32(rng.uniform(0.7, 1.15)) + walk(0.05),
        "light_dir": np.full(n, rng.uniform(0, 2 * np.pi), np.float32), "blink": blink,
        "occlude": (markov_runs(rng, n, cfg.occlusion_fraction, 0.7 * cfg.fps) if not still
                    else rng.random(n) < cfg.occlusion_fraction),
        "blur": rng.random(n) < cfg.blur_fraction,
    }


def encode_jpeg(frame: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
