"""The procedural scene of a synthetic H&E slide: tissue, lesions, pen mark, stain fields.

A :class:`Scene` is a small, resolution-independent description built from a
:class:`SyntheticSlideSpec` (all lengths in µm, origin at the slide's top-left corner).
Large objects (tissue pieces, lesions) are explicit; nuclei and textures are hash-based
point processes evaluated on demand, so any region can be rendered at any pixel size.

Lesions follow the CS-MIL toy data idea: *micro* lesions are small clusters of atypical
nuclei that only a 20x patch resolves (their area has the same mean colour as the tissue
around it), *macro* lesions are large architectural changes (glands, denser and more
basophilic tissue) seen at 5x, made of ordinary-looking nuclei.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from ..config import MPP_AT_1X
from ..errors import ConfigError
from .noise import hash_uniform, value_noise_points

__all__ = [
    "LesionType",
    "SyntheticSlideSpec",
    "StarBlob",
    "MicroLesion",
    "MacroLesion",
    "TissuePiece",
    "PenMark",
    "Scene",
    "build_scene",
    "Fields",
    "evaluate_fields",
    "NUCLEUS_CELL_UM",
    "nucleus_area_factor",
]

#: period of the nucleus lattice (one candidate nucleus per cell)
NUCLEUS_CELL_UM = 8.0
#: mean semi-axis of a normal nucleus (µm); a is in [0.8, 1.2]·this, b/a in [0.6, 1.0]
NUCLEUS_RADIUS_UM = 3.0
#: atypical (micro-lesion) nuclei
ATYPICAL_RADIUS_UM = (4.0, 5.4)
#: coverage of a micro lesion's disk by its atypical nuclei
MICRO_COVERAGE = 0.2


def nucleus_area_factor() -> float:
    """E[π a b] / cell area of one existing normal nucleus (coverage per unit existence)."""
    e_a2 = NUCLEUS_RADIUS_UM**2 * (0.64 + 0.32 + 0.16 / 3)  # E[(0.8 + 0.4u)²]
    return math.pi * e_a2 * 0.8 / NUCLEUS_CELL_UM**2


class LesionType(StrEnum):
    NONE = "none"
    MICRO = "micro"
    MACRO = "macro"
    MIXED = "mixed"  # both kinds (demo slides); cohorts use micro or macro


_DEFAULT_N = {LesionType.NONE: 0, LesionType.MICRO: 5, LesionType.MACRO: 2, LesionType.MIXED: 4}


@dataclass(frozen=True)
class SyntheticSlideSpec:
    """What to generate. ``size`` is (height, width) of level 0 in pixels."""

    size: tuple[int, int]
    seed: int = 0
    lesion_type: LesionType | str = LesionType.NONE
    n_lesions: int | None = None  # None: 5 micro, 2 macro, 4 mixed, 0 none
    mpp: float = 0.25
    tile_size: int = 256
    n_tissue_pieces: int | None = None  # None: 1–3, from the seed
    faint_tissue: bool = True
    pen_mark: bool = False
    quality: int = 90

    def __post_init__(self) -> None:
        try:
            lesion_type = LesionType(str(self.lesion_type).lower())
        except ValueError:
            raise ConfigError(
                f"Unknown lesion type {self.lesion_type!r}: use one of "
                f"{', '.join(t.value for t in LesionType)}."
            ) from None
        object.__setattr__(self, "lesion_type", lesion_type)
        h, w = (int(v) for v in self.size)
        if min(h, w) < 512 or max(h, w) > 400_000:
            raise ConfigError(f"Slide size {self.size!r} must be between 512 and 400000 px a side.")
        object.__setattr__(self, "size", (h, w))
        n = _DEFAULT_N[lesion_type] if self.n_lesions is None else int(self.n_lesions)
        if lesion_type is LesionType.NONE and n:
            raise ConfigError("A negative slide (lesion_type='none') has no lesions: n_lesions=0.")
        if lesion_type is not LesionType.NONE and n < 1:
            raise ConfigError(f"A {lesion_type} slide needs n_lesions ≥ 1, got {n}.")
        object.__setattr__(self, "n_lesions", n)
        if not 0.05 <= float(self.mpp) <= 2.0:
            raise ConfigError(f"mpp must be in [0.05, 2] µm/px, got {self.mpp!r}.")
        if self.tile_size % 16 or not 64 <= self.tile_size <= 2048:
            raise ConfigError(
                f"tile_size must be a multiple of 16 in [64, 2048], got {self.tile_size}."
            )
        if self.n_tissue_pieces is not None and not 1 <= self.n_tissue_pieces <= 4:
            raise ConfigError(f"n_tissue_pieces must be 1–4, got {self.n_tissue_pieces}.")
        if int(self.seed) < 0:
            raise ConfigError(f"seed must be ≥ 0, got {self.seed}.")

    @property
    def label(self) -> int:
        return int(self.lesion_type is not LesionType.NONE)

    @property
    def magnification(self) -> float:
        return MPP_AT_1X / self.mpp

    @property
    def size_um(self) -> tuple[float, float]:
        return self.size[0] * self.mpp, self.size[1] * self.mpp


@dataclass(frozen=True)
class StarBlob:
    """A smooth lobed blob: boundary radius r(θ) = R·(1 + Σ a_k cos(kθ + φ_k))."""

    cx: float
    cy: float
    radius: float
    ks: tuple[int, ...]
    amps: tuple[float, ...]
    phases: tuple[float, ...]

    @property
    def r_max(self) -> float:
        return self.radius * (1.0 + sum(abs(a) for a in self.amps))

    def boundary(self, theta: np.ndarray) -> np.ndarray:
        r = np.ones_like(theta)
        for k, a, ph in zip(self.ks, self.amps, self.phases, strict=True):
            r = r + a * np.cos(k * theta + ph)
        return self.radius * r

    def signed_distance(self, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """≈ distance (µm) inside the boundary (positive inside, negative outside)."""
        dx, dy = x - self.cx, y - self.cy
        return self.boundary(np.arctan2(dy, dx)) - np.hypot(dx, dy)

    def polygon_xy(self, step_um: float = 10.0) -> np.ndarray:
        n = int(np.clip(2 * math.pi * self.r_max / step_um, 96, 1440))
        theta = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
        r = self.boundary(theta)
        return np.stack([self.cx + r * np.cos(theta), self.cy + r * np.sin(theta)], axis=1)

    def intersects(self, x0: float, y0: float, x1: float, y1: float, margin: float = 0.0) -> bool:
        r = self.r_max + margin
        return not (self.cx + r < x0 or self.cx - r > x1 or self.cy + r < y0 or self.cy - r > y1)


def _random_blob(rng: np.random.Generator, cx: float, cy: float, radius: float,
                 lobes: float = 0.22) -> StarBlob:
    ks = (2, 3, 4, 5, 7, 9)
    raw = rng.uniform(0.3, 1.0, len(ks)) / np.array(ks, float) ** 0.7
    amps = raw / raw.sum() * lobes
    return StarBlob(cx, cy, radius, ks, tuple(float(a) for a in amps),
                    tuple(float(p) for p in rng.uniform(0, 2 * math.pi, len(ks))))


@dataclass(frozen=True)
class TissuePiece:
    blobs: tuple[StarBlob, ...]
    stain: float = 1.0  # < 1: a faint piece

    def bounds(self) -> tuple[float, float, float, float]:
        return (min(b.cx - b.r_max for b in self.blobs), min(b.cy - b.r_max for b in self.blobs),
                max(b.cx + b.r_max for b in self.blobs), max(b.cy + b.r_max for b in self.blobs))

    def polygon(self):
        import shapely
        from shapely.geometry import Polygon

        return shapely.union_all([Polygon(b.polygon_xy()).buffer(0) for b in self.blobs])


@dataclass(frozen=True, eq=False)
class MicroLesion:
    """A disk of radius ``radius`` µm holding atypical nuclei ``nuclei`` (N, 6):
    x, y, a, b, θ, h (centre µm, semi-axes µm, angle, hematoxylin amount)."""

    cx: float
    cy: float
    radius: float
    nuclei: np.ndarray = field(repr=False)

    @property
    def coverage(self) -> float:
        n = self.nuclei
        return float(np.sum(math.pi * n[:, 2] * n[:, 3]) / (math.pi * self.radius**2))


@dataclass(frozen=True)
class MacroLesion:
    blob: StarBlob
    gland_cell_um: float


@dataclass(frozen=True, eq=False)
class PenMark:
    points: np.ndarray = field(repr=False)  # (K, 2) x, y µm of a polyline
    width_um: float = 200.0


@dataclass(frozen=True, eq=False)
class Scene:
    spec: SyntheticSlideSpec
    pieces: tuple[TissuePiece, ...]
    micro: tuple[MicroLesion, ...]
    macro: tuple[MacroLesion, ...]
    pen: PenMark | None

    @property
    def seed(self) -> int:
        return int(self.spec.seed)

    # -- geometry for ground truth (µm) -------------------------------------------------
    def tissue_polygons(self) -> list:
        return [p.polygon() for p in self.pieces]

    def tissue_union(self):
        import shapely

        return shapely.union_all(self.tissue_polygons())

    def lesion_polygons(self) -> list[tuple[str, object]]:
        from shapely.geometry import Point, Polygon

        out: list[tuple[str, object]] = []
        for m in self.micro:
            out.append(("micro", Point(m.cx, m.cy).buffer(m.radius, quad_segs=16)))
        for m in self.macro:
            out.append(("macro", Polygon(m.blob.polygon_xy()).buffer(0)))
        return out

    def pen_polygon(self):
        if self.pen is None:
            return None
        from shapely.geometry import LineString

        return LineString(self.pen.points).buffer(self.pen.width_um / 2)


# --------------------------------------------------------------------------- building
def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED, stream]))


def _layout_pieces(spec: SyntheticSlideSpec, rng: np.random.Generator) -> list[TissuePiece]:
    h_um, w_um = spec.size_um
    aspect = max(h_um, w_um) / min(h_um, w_um)
    n = spec.n_tissue_pieces or int(rng.integers(1, max(1, min(3, int(aspect * 1.4))) + 1))
    along_x = w_um >= h_um
    cell_w, cell_h = (w_um / n, h_um) if along_x else (w_um, h_um / n)
    pieces = []
    for i in range(n):
        ox, oy = (i * cell_w, 0.0) if along_x else (0.0, i * cell_h)
        rb = 0.44 * min(cell_w, cell_h)
        cx = ox + cell_w / 2 + rng.uniform(-0.04, 0.04) * cell_w
        cy = oy + cell_h / 2 + rng.uniform(-0.04, 0.04) * cell_h
        lobes = 0.22
        main = _random_blob(rng, cx, cy, 0.7 * rb / (1 + lobes), lobes)
        blobs = [main]
        for _ in range(int(rng.integers(1, 3))):
            r_s = rng.uniform(0.28, 0.38) * rb / (1 + lobes)
            d = rb - r_s * (1 + lobes)
            ang = rng.uniform(0, 2 * math.pi)
            sx, sy = cx + d * math.cos(ang), cy + d * math.sin(ang)
            blobs.append(_random_blob(rng, sx, sy, r_s, lobes))
        pieces.append(TissuePiece(tuple(blobs)))
    return pieces


def _place_faint(spec, rng, pieces: list[TissuePiece]) -> TissuePiece | None:
    from shapely.geometry import Point

    h_um, w_um = spec.size_um
    occupied = [p.polygon() for p in pieces]
    r = 0.07 * min(h_um, w_um)
    for _ in range(300):
        cx, cy = rng.uniform(r * 1.4, w_um - r * 1.4), rng.uniform(r * 1.4, h_um - r * 1.4)
        disk = Point(cx, cy).buffer(r * 1.35 + 0.02 * min(h_um, w_um))
        if not any(disk.intersects(o) for o in occupied):
            return TissuePiece((_random_blob(rng, cx, cy, r, 0.2),), stain=0.3)
    return None


def _atypical_nuclei(rng: np.random.Generator, cx: float, cy: float, radius: float) -> np.ndarray:
    """Dart-throw non-overlapping atypical nuclei into the disk up to MICRO_COVERAGE."""
    target = MICRO_COVERAGE * math.pi * radius**2
    nuclei: list[tuple[float, ...]] = []
    area = 0.0
    for _ in range(4000):
        if area >= target:
            break
        a = rng.uniform(*ATYPICAL_RADIUS_UM)
        b = a * rng.uniform(0.65, 0.92)
        rho = (radius - a) * math.sqrt(rng.uniform())
        phi = rng.uniform(0, 2 * math.pi)
        x, y = cx + rho * math.cos(phi), cy + rho * math.sin(phi)
        if area + math.pi * a * b > target * 1.08:
            continue
        if any(math.hypot(x - n[0], y - n[1]) < a + n[2] + 1.0 for n in nuclei):
            continue
        nuclei.append((x, y, a, b, rng.uniform(0, math.pi), rng.uniform(0.85, 1.05)))
        area += math.pi * a * b
    return np.array(nuclei, np.float64).reshape(-1, 6)


def _place_lesions(spec, rng, pieces) -> tuple[list[MicroLesion], list[MacroLesion]]:
    import shapely
    from shapely.geometry import Point, Polygon

    kind = spec.lesion_type
    n = int(spec.n_lesions)
    if kind is LesionType.NONE:
        return [], []
    n_macro = n if kind is LesionType.MACRO else (max(1, n // 4) if kind is LesionType.MIXED else 0)
    n_micro = n - n_macro
    normal = [p for p in pieces if p.stain == 1.0]
    polys = [p.polygon() for p in normal]
    areas = np.array([p.area for p in polys])
    taken: list = []
    macro: list[MacroLesion] = []
    for _ in range(n_macro):
        for attempt in range(200):
            i = int(rng.choice(len(polys), p=areas / areas.sum()))
            piece_r = math.sqrt(areas[i] / math.pi)
            r_hi = min(1000.0, 0.55 * piece_r) * (0.97**(attempt // 20))
            r = rng.uniform(max(0.5 * r_hi, min(250.0, r_hi * 0.8)), r_hi)
            inner = polys[i].buffer(-0.55 * r)
            if inner.is_empty:
                continue
            x0, y0, x1, y1 = inner.bounds
            c = Point(rng.uniform(x0, x1), rng.uniform(y0, y1))
            if not inner.contains(c):
                continue
            blob = _random_blob(rng, c.x, c.y, r / 1.25, 0.25)
            shape = Polygon(blob.polygon_xy()).buffer(0)
            if not polys[i].buffer(-20.0).contains(shape):
                continue
            if any(shape.buffer(100.0).intersects(t) for t in taken):
                continue
            taken.append(shape)
            macro.append(MacroLesion(blob, float(np.clip(r / 2.5, 90.0, 160.0))))
            break
    micro: list[MicroLesion] = []
    margin = min(90.0, 0.45 * math.sqrt(float(areas.max()) / math.pi))
    inner = shapely.union_all(polys).buffer(-margin)
    shapely.prepare(inner)
    for _ in range(n_micro if not inner.is_empty else 0):
        x0, y0, x1, y1 = inner.bounds
        for _attempt in range(400):
            r = rng.uniform(20.0, float(np.clip(margin - 10.0, 20.0, 40.0)))
            c = Point(rng.uniform(x0, x1), rng.uniform(y0, y1))
            if not inner.contains(c):
                continue
            if any(c.distance(t) < r + 150.0 for t in taken):
                continue
            taken.append(c.buffer(r))
            micro.append(MicroLesion(c.x, c.y, r, _atypical_nuclei(rng, c.x, c.y, r)))
            break
    if not micro and not macro:
        raise ConfigError(
            f"No lesion fits in a {spec.size[1]}×{spec.size[0]} px slide: make it larger."
        )
    return micro, macro


def _place_pen(spec, rng, pieces) -> PenMark:
    p = pieces[0]
    x0, y0, x1, y1 = p.bounds()
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, 0.55 * max(x1 - x0, y1 - y0)
    start = rng.uniform(0, 2 * math.pi)
    theta = start + np.linspace(0, rng.uniform(0.5, 0.9) * math.pi, 24)
    wobble = 1 + 0.03 * np.sin(3 * theta + rng.uniform(0, 6))
    pts = np.stack([cx + r * wobble * np.cos(theta), cy + r * wobble * np.sin(theta)], axis=1)
    return PenMark(pts, width_um=float(np.clip(0.015 * min(spec.size_um), 60, 400)))


def build_scene(spec: SyntheticSlideSpec) -> Scene:
    """Place tissue pieces, lesions and the optional pen mark, deterministically per seed."""
    rng = _rng(spec.seed, 1)
    pieces = _layout_pieces(spec, rng)
    if spec.faint_tissue:
        faint = _place_faint(spec, _rng(spec.seed, 2), pieces)
        if faint is not None:
            pieces.append(faint)
    micro, macro = _place_lesions(spec, _rng(spec.seed, 3), pieces)
    pen = _place_pen(spec, _rng(spec.seed, 4), pieces) if spec.pen_mark else None
    return Scene(spec, tuple(pieces), tuple(micro), tuple(macro), pen)


# --------------------------------------------------------------------------- fields
@dataclass(frozen=True)
class Fields:
    """Smooth per-point fields (float32 arrays of the points' shape)."""

    tissue: np.ndarray  # 0..1
    stain: np.ndarray  # stain strength (1 normal, < 1 faint)
    macro: np.ndarray  # 0..1 inside macro lesions
    lumen: np.ndarray  # 0..1 inside gland lumens
    rim: np.ndarray  # 0..1 on gland epithelium
    micro: np.ndarray  # 0..1 inside micro lesion disks
    micro_cov: np.ndarray  # coverage of the micro lesion the point is in
    pen: np.ndarray  # 0..1 pen ink
    eosin_var: np.ndarray  # low-frequency stain variation, ≈ [-1, 1]
    orient: np.ndarray  # 0..1, blends the two fibre directions
    density: np.ndarray  # probability that a nucleus cell holds a nucleus (micro lesions aside)


def _soft(d: np.ndarray, edge: float) -> np.ndarray:
    return np.clip(d / edge + 0.5, 0.0, 1.0)


def _glands(scene: Scene, m: MacroLesion, y, x, edge: float):
    g = m.gland_cell_um
    seed = scene.seed
    cx_i, cy_i = np.floor(x / g).astype(np.int64), np.floor(y / g).astype(np.int64)
    u = [hash_uniform(seed, 40 + k, cy_i, cx_i) for k in range(6)]
    exists = u[0] < 0.75
    gx = (cx_i + 0.5 + 0.3 * (u[1] - 0.5)) * g  # outer radius ≤ 0.34 g: stays in its cell
    gy = (cy_i + 0.5 + 0.3 * (u[2] - 0.5)) * g
    a = (0.12 + 0.12 * u[3]) * g
    b = a * (0.6 + 0.4 * u[4])
    th = math.pi * u[5]
    dx, dy = x - gx, y - gy
    c, s = np.cos(th), np.sin(th)
    rho = np.sqrt(((dx * c + dy * s) / a) ** 2 + ((-dx * s + dy * c) / b) ** 2)
    r_mean = np.sqrt(a * b)
    dist = (rho - 1.0) * r_mean  # µm outside the lumen edge
    rim_w = np.maximum(0.1 * g, 9.0)
    lumen = _soft(-dist, edge) * exists
    rim = (_soft(dist, edge) * _soft(rim_w - dist, edge)) * exists
    return lumen, rim


def evaluate_fields(scene: Scene, y: np.ndarray, x: np.ndarray, edge: float = 3.0) -> Fields:
    """Evaluate every smooth field at points (µm). ``edge`` is the soft-edge width (µm)."""
    y0_, x0_ = np.asarray(y, np.float64), np.asarray(x, np.float64)  # grids stay separable
    shape = np.broadcast(y0_, x0_).shape
    y, x = np.broadcast_to(y0_, shape), np.broadcast_to(x0_, shape)
    bx0, by0, bx1, by1 = float(x.min()), float(y.min()), float(x.max()), float(y.max())
    seed = scene.seed
    zeros = np.zeros(shape, np.float64)
    tissue, stain = zeros.copy(), np.ones(shape, np.float64)
    for piece in scene.pieces:
        blobs = [b for b in piece.blobs if b.intersects(bx0, by0, bx1, by1, edge)]
        if not blobs:
            continue
        sd = np.max([b.signed_distance(y, x) for b in blobs], axis=0)
        t = _soft(sd, edge)
        if piece.stain != 1.0:
            stain = np.where(t > 0, piece.stain, stain)
        tissue = np.maximum(tissue, t)
    macro, lumen, rim = zeros.copy(), zeros.copy(), zeros.copy()
    for m in scene.macro:
        if not m.blob.intersects(bx0, by0, bx1, by1, edge):
            continue
        mk = _soft(m.blob.signed_distance(y, x), 4.0 * edge)
        macro = np.maximum(macro, mk)
        lu, ri = _glands(scene, m, y, x, edge)
        lumen = np.maximum(lumen, lu * mk)
        rim = np.maximum(rim, ri * mk)
    micro, micro_cov = zeros.copy(), zeros.copy()
    for m in scene.micro:
        if m.cx + m.radius + edge < bx0 or m.cx - m.radius - edge > bx1 \
                or m.cy + m.radius + edge < by0 or m.cy - m.radius - edge > by1:
            continue
        mk = _soft(m.radius - np.hypot(x - m.cx, y - m.cy), edge)
        micro = np.maximum(micro, mk)
        micro_cov = np.where(mk > 0, m.coverage, micro_cov)
    pen = zeros.copy()
    if scene.pen is not None:
        pts, half = scene.pen.points, scene.pen.width_um / 2
        if (pts[:, 0].min() - half <= bx1 and pts[:, 0].max() + half >= bx0
                and pts[:, 1].min() - half <= by1 and pts[:, 1].max() + half >= by0):
            d = np.full(shape, np.inf)
            for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:], strict=True):
                vx, vy = x1 - x0, y1 - y0
                t = np.clip(((x - x0) * vx + (y - y0) * vy) / (vx * vx + vy * vy), 0, 1)
                d = np.minimum(d, np.hypot(x - x0 - t * vx, y - y0 - t * vy))
            wob = 1 + 0.15 * value_noise_points(y, x, 3 * half, seed, 60)
            pen = _soft(half * wob - d, 2 * edge) * 0.9
    eosin_var = (0.8 * value_noise_points(y0_, x0_, 300.0, seed, 10)
                 + 0.2 * value_noise_points(y0_, x0_, 60.0, seed, 11))
    density = 0.5 * (1 + 0.5 * value_noise_points(y0_, x0_, 400.0, seed, 12)
                     + 0.1 * value_noise_points(y0_, x0_, 50.0, seed, 14))
    density = density * (1 + 0.6 * macro) * (1 - 0.8 * lumen) + 0.9 * rim
    density = np.clip(density, 0, 0.95) * (tissue > 0.5)
    orient = np.clip(0.5 + 0.9 * value_noise_points(y0_, x0_, 120.0, seed, 13), 0, 1)
    f32 = np.float32
    return Fields(tissue.astype(f32), stain.astype(f32), macro.astype(f32), lumen.astype(f32),
                  rim.astype(f32), micro.astype(f32), micro_cov.astype(f32), pen.astype(f32),
                  eosin_var.astype(f32), orient.astype(f32), density.astype(f32))
