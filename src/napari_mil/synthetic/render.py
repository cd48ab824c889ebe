"""Rendering a synthetic :class:`~.synthetic_scene.Scene` into RGB pixels, one region at a time.

:class:`SceneRenderer` is a :data:`~.tiff_writer.Renderer`: ``renderer(downsample, x, y, w, h)``
returns the (h, w, 3) uint8 region of that pyramid level. Colours follow Beer–Lambert with
hematoxylin / eosin optical-density vectors and are composited in intensity space, so the
mean colour of an area equals the area-weighted mean of its parts. Pixel sizes up to 1 µm
render every nucleus; up to 2.5 µm they are supersampled; coarser levels render the
expected ("mean-field") colour of nuclei and fine textures, which is what averaging the
fine level would give.
"""

from __future__ import annotations

import math

import numpy as np

from .noise import (
    grid_nodes,
    hash_uniform,
    upsample_grid,
    value_noise_grid,
    value_noise_points,
)
from .scene import (
    NUCLEUS_CELL_UM,
    NUCLEUS_RADIUS_UM,
    Scene,
    evaluate_fields,
    nucleus_area_factor,
)

__all__ = ["SceneRenderer", "PrefetchRenderer", "GLASS_RGB"]

#: background (glass) intensity, and stain optical-density vectors (Macenko reference H&E)
GLASS_RGB = np.array([243.0, 241.0, 245.0], np.float32)
_H = np.array([0.5626, 0.7201, 0.4062], np.float32)
_E = np.array([0.2159, 0.8012, 0.5581], np.float32)
_PEN = np.array([0.75, 0.22, 0.55], np.float32)  # green marker
_LN10 = np.float32(math.log(10.0))

_EOSIN = 0.30  # stroma eosin concentration
_STROMA_H = 0.045  # faint hematoxylin background in stroma
_NUC_H = 0.62  # mean hematoxylin of a normal nucleus
_NUC_E = 0.12
_ATYP_H = 0.68  # atypical nuclei are darker...
_CHROM = 0.15  # ...and have coarser chromatin
_ATYP_CHROM = 0.55
_FIBRE_AMP, _CLEFT_CUT = 0.45, (0.5, 0.7)
_MEAN_FIELD_PX_UM = 2.5  # coarser pixels render expected colours
_DETAIL_PX_UM = 1.0  # supersample to this pixel size for nuclei


def _intensity(od: np.ndarray) -> np.ndarray:
    return GLASS_RGB * np.exp(-_LN10 * od)


def _band(spacing: float, px: float) -> float:
    """Weight of a noise octave of ``spacing`` µm at pixel size ``px`` (0: averaged out)."""
    return float(np.clip(spacing / (2.0 * px) - 0.5, 0.0, 1.0))


def _smoothstep(e0: float, e1: float, v: np.ndarray) -> np.ndarray:
    t = np.clip((v - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


class SceneRenderer:
    """Renders regions of a scene at any downsample (a tiff_writer Renderer)."""

    def __init__(self, scene: Scene, *, max_block: int = 512) -> None:
        self.scene = scene
        self.mpp = float(scene.spec.mpp)
        self.seed = scene.seed
        self.max_block = int(max_block)
        # overlapping neighbours cover ~7 % less than the sum of their areas (measured)
        self._area_factor = np.float32(nucleus_area_factor() * 0.93)
        self._nuc_mean = self._mean_nucleus(_NUC_H, (0.85, 1.15), _CHROM)
        self._atyp_mean = self._mean_nucleus(_ATYP_H, (0.85, 1.05), _ATYP_CHROM)
        # expected stroma texture factors (for the mean-field levels)
        rng = np.random.default_rng(12345)
        n = value_noise_points(rng.uniform(0, 1e4, 4096), rng.uniform(0, 1e4, 4096), 1.0, 7, 7)
        self._fibre_mean = float(np.mean(1 + _FIBRE_AMP * n))
        self._cleft_mean = float(np.mean(1 - 0.85 * _smoothstep(*_CLEFT_CUT, n)))

    def _mean_nucleus(self, h0: float, h_range: tuple[float, float], chrom: float) -> np.ndarray:
        """Mean RGB intensity of such nuclei (Monte Carlo over their darkness and texture)."""
        rng = np.random.default_rng(7)
        h = h0 * rng.uniform(*h_range, 4096)
        n = value_noise_points(rng.uniform(0, 1e4, h.size), rng.uniform(0, 1e4, h.size), 1.0, 3, 3)
        conc = (h * (1 + chrom * n))[:, None]
        return _intensity(conc * _H + _NUC_E * _E).mean(axis=0).astype(np.float32)

    # ------------------------------------------------------------------ public renderer
    def __call__(self, downsample: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        px = float(downsample) * self.mpp
        if px <= _DETAIL_PX_UM:
            f, detail = 1, True
        elif px <= _MEAN_FIELD_PX_UM:
            f, detail = math.ceil(px / _DETAIL_PX_UM), True
        else:
            f, detail = 2, False
        out = np.empty((h, w, 3), np.uint8)
        block = max(16, self.max_block // f)
        for by in range(0, h, block):
            for bx in range(0, w, block):
                bh, bw = min(block, h - by), min(block, w - bx)
                ys = ((y + by) * downsample + (np.arange(bh * f) + 0.5) * downsample / f) * self.mpp
                xs = ((x + bx) * downsample + (np.arange(bw * f) + 0.5) * downsample / f) * self.mpp
                rgb = self.render_um(ys, xs, px / f, detail=detail)
                if f > 1:
                    rgb = rgb.reshape(bh, f, bw, f, 3).mean(axis=(1, 3))
                out[by:by + bh, bx:bx + bw] = np.clip(rgb + 0.5, 0, 255).astype(np.uint8)
        return out

    def overview(self, max_size: int = 768) -> np.ndarray:
        """Expected-colour image of the whole slide, ``max_size`` px on its long side."""
        h_um, w_um = self.scene.spec.size_um
        px = max(h_um, w_um) / max_size
        ys = (np.arange(max(1, round(h_um / px))) + 0.5) * px
        xs = (np.arange(max(1, round(w_um / px))) + 0.5) * px
        rgb = self.render_um(ys, xs, px, detail=False)
        return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)

    def _touches_scene(self, x0: float, y0: float, x1: float, y1: float, px: float) -> bool:
        """Whether the box (µm) may hold tissue or ink (else it is plain glass)."""
        pad = max(3.0, 2.0 * px) + 4.0 * max(2.0, 4.0 * px)
        for piece in self.scene.pieces:
            if any(b.intersects(x0, y0, x1, y1, pad) for b in piece.blobs):
                return True
        pen = self.scene.pen
        if pen is not None:
            half = pen.width_um + pad
            px0, py0 = pen.points.min(axis=0) - half
            px1, py1 = pen.points.max(axis=0) + half
            if px0 <= x1 and px1 >= x0 and py0 <= y1 and py1 >= y0:
                return True
        return False

    # ------------------------------------------------------------------ rendering in µm
    def render_um(self, ys: np.ndarray, xs: np.ndarray, px: float, *,
                  detail: bool = True) -> np.ndarray:
        """RGB float32 (len(ys), len(xs), 3) at pixel centres ``ys`` × ``xs`` (µm)."""
        shape = (ys.size, xs.size)
        if not self._touches_scene(float(xs[0]), float(ys[0]), float(xs[-1]), float(ys[-1]), px):
            return np.broadcast_to(GLASS_RGB, shape + (3,)).copy()
        spacing = max(2.0, 4.0 * px)
        (y0, ny), (x0, nx) = grid_nodes(ys, spacing), grid_nodes(xs, spacing)
        ny_um = (np.arange(y0, y0 + ny) * spacing)[:, None]
        nx_um = (np.arange(x0, x0 + nx) * spacing)[None, :]
        nodes = evaluate_fields(self.scene, ny_um, nx_um, edge=max(3.0, 2.0 * px))
        if nodes.tissue.max() <= 0 and nodes.pen.max() <= 0:
            return np.broadcast_to(GLASS_RGB, shape + (3,)).copy()

        names = ("tissue", "stain", "pen", "macro", "lumen", "rim", "micro", "micro_cov",
                 "eosin_var", "orient", "density")
        node_values = {n: getattr(nodes, n) for n in names}
        consts: dict[str, np.float32] = {}
        varying: list[str] = []
        for name, v in node_values.items():
            lo, hi = float(v.min()), float(v.max())
            if hi - lo < 1e-6:
                consts[name] = np.float32(lo)
            else:
                varying.append(name)
        if varying:
            stack = np.stack([node_values[n] for n in varying], axis=-1)
            ups = upsample_grid(stack, ys, xs, spacing, (y0, x0))
            fields = {n: ups[..., i] for i, n in enumerate(varying)}
        else:
            fields = {}

        def up(name: str) -> np.ndarray | np.float32:
            return fields[name] if name in fields else consts[name]

        tissue, stain, pen = up("tissue"), up("stain"), up("pen")
        macro, lumen, rim = up("macro"), up("lumen"), up("rim")
        seed = self.seed
        # ---- stroma (eosin) with fibres and clefts, band-limited to the pixel size
        e_conc = _EOSIN * (1 + 0.15 * up("eosin_var")) * (1 - 0.3 * macro)
        e_conc = e_conc * (1 - 0.85 * lumen) * (1 + 0.35 * rim)
        wf = _band(1.5, px)
        if wf > 0:
            orient = up("orient")
            fa = value_noise_grid(ys, xs, (1.5, 9.0), seed, 20)
            fb = value_noise_grid(ys, xs, (9.0, 1.5), seed, 21)
            fibre = fa * orient + fb * (1 - orient)
            tex = wf * (1 + _FIBRE_AMP * fibre) + (1 - wf) * self._fibre_mean
        else:
            tex = self._fibre_mean
        wc = _band(6.0, px)
        if wc > 0:
            cl = value_noise_grid(ys, xs, 6.0, seed, 22)
            cleft = 1 - 0.85 * _smoothstep(*_CLEFT_CUT, cl)
            tex = tex * (wc * cleft + (1 - wc) * self._cleft_mean)
        else:
            tex = tex * self._cleft_mean
        e_conc = e_conc * tex * tissue * stain
        h_conc = (_STROMA_H + 0.13 * macro) * (1 - 0.8 * lumen) * tissue * stain
        od_pen = pen[..., None] * _PEN if np.ndim(pen) else pen * _PEN
        od = np.asarray(h_conc)[..., None] * _H + np.asarray(e_conc)[..., None] * _E + od_pen
        stroma = _intensity(np.broadcast_to(od, shape + (3,))).astype(np.float32)
        stain_arr = np.asarray(stain, np.float32)[..., None] if np.ndim(stain) else stain
        if not detail or nodes.density.max() <= 0:
            cov = np.asarray(up("density"))[..., None] * self._area_factor
            nuc = GLASS_RGB * (self._nuc_mean / GLASS_RGB) ** stain_arr * np.exp(-_LN10 * od_pen)
            return stroma + cov * (nuc - stroma)
        micro = up("micro")
        if np.ndim(micro) or micro > 0:
            # pale cytoplasm between atypical nuclei keeps the area's mean colour unchanged
            cov_n = np.asarray(up("density"))[..., None] * self._area_factor
            expected = stroma + cov_n * (self._nuc_mean - stroma)
            c_l = np.asarray(up("micro_cov"))[..., None]
            pale = (expected - c_l * self._atyp_mean) / np.maximum(1 - c_l, 0.05)
            pale = np.clip(pale, 0, GLASS_RGB)
            stroma = stroma + np.asarray(micro)[..., None] * (pale - stroma)
        alpha, hval = self._normal_nuclei(ys, xs, px)
        rgb = stroma.reshape(-1, 3)
        idx = np.flatnonzero(alpha > 0)
        if idx.size:
            od_n = hval.ravel()[idx, None] * _H + _NUC_E * _E
            od_n = od_n * (stain_arr.reshape(-1, 1)[idx] if np.ndim(stain) else stain)
            if np.ndim(od_pen) == 3:
                od_n = od_n + od_pen.reshape(-1, 3)[idx]
            elif np.ndim(od_pen):
                od_n = od_n + od_pen
            base = rgb[idx]
            rgb[idx] = base + alpha.ravel()[idx, None] * (_intensity(od_n) - base)
        rgb = rgb.reshape(shape + (3,))
        if self.scene.micro:
            rgb = self._atypical_nuclei(rgb, ys, xs, px, od_pen)
        return rgb

    # ------------------------------------------------------------------ nuclei
    def _normal_nuclei(self, ys: np.ndarray, xs: np.ndarray, px: float):
        """Coverage α and hematoxylin amount of the normal nuclei on the grid ``ys`` × ``xs``.

        One candidate nucleus per lattice cell (hash-based); each is stamped into a fixed-size
        window and the windows are summed with ``bincount`` (no Python loop per nucleus).
        """
        g = NUCLEUS_CELL_UM
        seed = self.seed
        h, w = ys.size, xs.size
        reach = NUCLEUS_RADIUS_UM * 1.2 + 2 * px
        r0, r1 = int(np.floor((ys[0] - reach) / g)), int(np.floor((ys[-1] + reach) / g))
        c0, c1 = int(np.floor((xs[0] - reach) / g)), int(np.floor((xs[-1] + reach) / g))
        rows = np.arange(r0, r1 + 1)[:, None]
        cols = np.arange(c0, c1 + 1)[None, :]
        cell = evaluate_fields(self.scene, (rows + 0.5) * g, (cols + 0.5) * g)
        u0 = hash_uniform(seed, 30, rows, cols)
        keep = u0 < cell.density * (1 - cell.micro)
        alpha = np.zeros((h, w), np.float32)
        if not keep.any():
            return alpha, alpha
        rr, cc = np.broadcast_to(rows, keep.shape)[keep], np.broadcast_to(cols, keep.shape)[keep]
        u = [hash_uniform(seed, 31 + k, rr, cc) for k in range(6)]
        cx, cy = (cc + u[0]) * g, (rr + u[1]) * g
        a = NUCLEUS_RADIUS_UM * (0.8 + 0.4 * u[2])
        b = a * (0.6 + 0.4 * u[3])
        th = math.pi * u[4]
        hv = _NUC_H * (0.85 + 0.3 * u[5])
        step_y = ys[1] - ys[0] if h > 1 else px
        step_x = xs[1] - xs[0] if w > 1 else px
        size = int(math.ceil(2 * reach / min(step_x, step_y))) + 1
        i0 = np.floor((cy - reach - ys[0]) / step_y).astype(np.int64)
        j0 = np.floor((cx - reach - xs[0]) / step_x).astype(np.int64)
        off = np.arange(size)
        ii = i0[:, None] + off[None, :]  # (N, S)
        jj = j0[:, None] + off[None, :]
        dy = (ys[0] + ii * step_y - cy[:, None]).astype(np.float32)[:, :, None]  # (N, S, 1)
        dx = (xs[0] + jj * step_x - cx[:, None]).astype(np.float32)[:, None, :]  # (N, 1, S)
        c, s = (np.cos(th) / a)[:, None, None], (np.sin(th) / a)[:, None, None]
        c2, s2 = (np.cos(th) / b)[:, None, None], (np.sin(th) / b)[:, None, None]
        q = np.sqrt((dx * c + dy * s) ** 2 + (dy * c2 - dx * s2) ** 2)  # (N, S, S)
        valid = ((ii >= 0) & (ii < h))[:, :, None] & ((jj >= 0) & (jj < w))[:, None, :]
        flat = np.where(valid, ii[:, :, None] * w + jj[:, None, :], h * w)
        wi = _band(1.0, px)
        fine = value_noise_grid(ys, xs, 1.0, seed, 24) if wi > 0 else None
        if fine is not None:  # irregular outlines and chromatin share one fine noise field
            q = q - 0.06 * wi * np.append(fine.ravel(), 0)[flat]
        rad = (np.sqrt(a * b) / px).astype(np.float32)[:, None, None]
        al = np.clip((1 - q) * rad + 0.5, 0, 1)
        flat, al = flat.ravel(), al.ravel()
        total = np.bincount(flat, al, minlength=h * w + 1)[: h * w]
        hsum = np.bincount(flat, (al * np.repeat(hv, size * size)), minlength=h * w + 1)[: h * w]
        alpha = np.minimum(total, 1.0).astype(np.float32).reshape(h, w)
        hval = (hsum / np.maximum(total, 1e-6)).astype(np.float32).reshape(h, w)
        if fine is not None:
            hval = hval * (1 + _CHROM * wi * fine)
        return alpha, hval

    def _atypical_nuclei(self, rgb, ys, xs, px, od_pen):
        x_lo, x_hi, y_lo, y_hi = xs[0], xs[-1], ys[0], ys[-1]
        lesions = [m for m in self.scene.micro
                   if m.cx + m.radius >= x_lo and m.cx - m.radius <= x_hi
                   and m.cy + m.radius >= y_lo and m.cy - m.radius <= y_hi]
        if not lesions:
            return rgb
        seed = self.seed
        wb = _band(1.6, px)
        chrom = (wb * value_noise_grid(ys, xs, 1.6, seed, 25)
                 + 0.4 * _band(0.7, px) * value_noise_grid(ys, xs, 0.7, seed, 26))
        irr = 0.14 * _band(2.0, px) * value_noise_grid(ys, xs, 2.0, seed, 27)
        step_y, step_x = ys[1] - ys[0] if ys.size > 1 else px, xs[1] - xs[0] if xs.size > 1 else px
        for m in lesions:
            for x, y, a, b, th, hf in m.nuclei:
                i0 = max(0, int(np.floor((y - a - 2 * px - ys[0]) / step_y)))
                i1 = min(ys.size, int(np.ceil((y + a + 2 * px - ys[0]) / step_y)) + 1)
                j0 = max(0, int(np.floor((x - a - 2 * px - xs[0]) / step_x)))
                j1 = min(xs.size, int(np.ceil((x + a + 2 * px - xs[0]) / step_x)) + 1)
                if i0 >= i1 or j0 >= j1:
                    continue
                dy = (ys[i0:i1] - y)[:, None]
                dx = (xs[j0:j1] - x)[None, :]
                c, s = math.cos(th), math.sin(th)
                q = np.sqrt(((dx * c + dy * s) / a) ** 2 + ((-dx * s + dy * c) / b) ** 2)
                al = np.clip((1 - q + irr[i0:i1, j0:j1]) * math.sqrt(a * b) / px + 0.5, 0, 1)
                hv = _ATYP_H * hf * (1 + _ATYP_CHROM * chrom[i0:i1, j0:j1])
                pen = od_pen[i0:i1, j0:j1] if np.ndim(od_pen) == 3 else od_pen
                nuc = _intensity(hv[..., None] * _H + _NUC_E * _E + pen)
                sub = rgb[i0:i1, j0:j1]
                rgb[i0:i1, j0:j1] = sub + al[..., None].astype(np.float32) * (nuc - sub)
        return rgb


class PrefetchRenderer:
    """Renders the tiles a pyramid writer will ask for next in a thread pool.

    The writer requests each level's tiles in row-major order; this wrapper predicts that
    order (from the slide size and tile size) and keeps ``lookahead`` tiles in flight, so
    several cores render while one thread encodes. Results are identical to calling the
    wrapped renderer directly; unexpected requests are simply rendered on the spot.
    Use as a context manager (it owns the pool).
    """

    def __init__(self, render: SceneRenderer, size: tuple[int, int], tile: int, *,
                 workers: int, lookahead: int | None = None) -> None:
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        self.render = render
        self.height, self.width = size
        self.tile = int(tile)
        self.pool = ThreadPoolExecutor(max(1, int(workers)), thread_name_prefix="synthetic")
        self.lookahead = lookahead or 4 * max(1, int(workers))
        self._queue: deque = deque()  # (key, future) in expected order
        self._keys = iter(())

    def _sequence(self, ds: int, x: int, y: int):
        lw, lh = max(1, self.width // ds), max(1, self.height // ds)
        t = self.tile
        for ty in range(y // t, -(-lh // t)):
            for tx in range(x // t if ty == y // t else 0, -(-lw // t)):
                tx0, ty0 = tx * t, ty * t
                yield (ds, tx0, ty0, min(t, lw - tx0), min(t, lh - ty0))

    def _top_up(self) -> None:
        while len(self._queue) < self.lookahead:
            key = next(self._keys, None)
            if key is None:
                return
            self._queue.append((key, self.pool.submit(self.render, *key)))

    def __call__(self, downsample: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        key = (int(downsample), int(x), int(y), int(w), int(h))
        if self._queue and self._queue[0][0] == key:
            _, future = self._queue.popleft()
            self._top_up()
            return future.result()
        for _, future in self._queue:
            future.cancel()
        self._queue.clear()
        aligned = x % self.tile == 0 and y % self.tile == 0 and w <= self.tile and h <= self.tile
        self._keys = self._sequence(key[0], key[1], key[2]) if aligned else iter(())
        if aligned:
            next(self._keys, None)  # this one is rendered right here
        self._top_up()
        return self.render(*key)

    def close(self) -> None:
        for _, future in self._queue:
            future.cancel()
        self._queue.clear()
        self.pool.shutdown(wait=True)

    def __enter__(self) -> PrefetchRenderer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
