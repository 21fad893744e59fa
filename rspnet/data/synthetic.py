"""A deterministic synthetic street-scene data set with the Cityscapes classes.

Every command of rspnet must run without downloading anything, so the library
carries its own data: ``render_scene(seed, H, W)`` draws a street seen from a
car (a one-point perspective) and its trainId label map.  The scene is built so
that segmenting it needs context, not just pixel colour: road, sidewalk,
buildings, poles, cars and overcast sky are all greys; vegetation and terrain
are both greens; a random shadow, global lighting and colour cast, and sensor
noise shift all colours from scene to scene.

Geometry: the camera looks down a straight street with its vanishing point at
(vx, horizon).  A ground point at lateral offset X metres (right positive) and
"nearness" s (1 at the bottom image row, 0 at the horizon; s is inverse depth)
is at pixel (vx + s * unit * X, horizon + s * unit * cam_h), where ``unit`` is
pixels per metre at s = 1.  A point h metres above that ground point is
s * unit * h pixels higher.  All objects are placed and sized in metres, which
gives consistent perspective for free.

All drawing is vectorised numpy on bounding boxes; a 256x512 scene takes
about 25 ms of one core.  A scene depends only on its seed and size (fresh
``numpy.random.Generator``s per call, no global state), so it is bit-identical
in any process or DataLoader worker.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image
from tqdm import tqdm

from .labels import IGNORE_INDEX, trainid_to_labelid
from .transforms import TransformedSamples, ValTransform

# trainIds, named for readability of the drawing code.
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN, VEGETATION, TERRAIN, \
    SKY, PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE = range(19)
_THINGS = np.zeros(256, dtype=bool)
_THINGS[[PERSON, RIDER, CAR, TRUCK, BUS, TRAIN, MOTORCYCLE, BICYCLE]] = True

# Colour choices.  Greys recur in several classes on purpose (see module doc).
_FACADES = np.array([(140, 140, 140), (180, 170, 150), (150, 95, 75), (205, 200, 195),
                     (95, 95, 100), (170, 150, 120), (120, 130, 140)], np.float32)
_VEHICLES = np.array([(200, 200, 200), (130, 130, 135), (40, 40, 45), (150, 30, 30),
                      (30, 50, 120), (225, 225, 220), (90, 100, 90), (180, 160, 60)], np.float32)
_CLOTHES = np.array([(40, 40, 50), (120, 120, 125), (200, 200, 190), (60, 60, 110),
                     (150, 40, 40), (90, 70, 50), (30, 90, 60)], np.float32)
_GREENS = np.array([(70, 105, 40), (95, 125, 50), (55, 80, 45), (115, 120, 60)], np.float32)


@dataclass
class _Street:
    """Scene layout, in metres (lateral X) and nearness s (see module doc)."""
    horizon: float
    vx: float
    unit: float
    cam_h: float
    centre: float      # lateral offset of the road centre
    half_road: float
    walk_left: float   # sidewalk widths
    walk_right: float
    gap_left: float    # terrain strip between sidewalk and facade
    gap_right: float
    s_far: float       # nearness of the buildings closing the street

    def x(self, s, lateral):
        return self.vx + s * self.unit * lateral

    def y(self, s, height=0.0):
        return self.horizon + s * self.unit * (self.cam_h - height)

    def facade_lateral(self, side: int) -> float:
        """Lateral position of the left (side=-1) or right (side=+1) facades."""
        if side < 0:
            return self.centre - (self.half_road + self.walk_left + self.gap_left)
        return self.centre + self.half_road + self.walk_right + self.gap_right


class _Canvas:
    """Image (float RGB) and label being drawn, plus shared texture fields
    (drawn from ``noise_rng``, whose use depends on the image size)."""

    def __init__(self, noise_rng: np.random.Generator, height: int, width: int):
        self.h, self.w = height, width
        self.image = np.zeros((height, width, 3), np.float32)
        self.label = np.zeros((height, width), np.uint8)
        self.grain = noise_rng.standard_normal((height, width), dtype=np.float32)
        self.blotch = _value_noise(noise_rng, height, width, cell=max(2, width // 40))
        self.ys = np.arange(height, dtype=np.float32)[:, None]
        self.xs = np.arange(width, dtype=np.float32)[None, :]

    def box(self, y0, y1, x0, x1):
        """Slices of the pixel box [y0, y1) x [x0, x1) clipped to the canvas,
        or None when it is empty."""
        y0, y1 = max(0, int(np.floor(y0))), min(self.h, int(np.ceil(y1)))
        x0, x1 = max(0, int(np.floor(x0))), min(self.w, int(np.ceil(x1)))
        if y0 >= y1 or x0 >= x1:
            return None
        return slice(y0, y1), slice(x0, x1)

    def paint(self, region, mask, colour, cls, grain=4.0, blotch=0.0):
        """Paint ``colour`` (RGB, or per-pixel (h, w, 3)) with class ``cls``
        where ``mask`` holds inside ``region``, adding texture: ``grain`` is
        the amplitude of per-pixel noise, ``blotch`` of smooth noise."""
        ys, xs = region
        shade = grain * self.grain[ys, xs]
        if blotch:
            shade += blotch * self.blotch[ys, xs]
        # copyto(where=) is several times faster than boolean-mask assignment.
        np.copyto(self.image[ys, xs], np.asarray(colour, np.float32) + shade[..., None],
                  where=mask[..., None])
        np.copyto(self.label[ys, xs], cls, where=mask, casting="unsafe")

    @staticmethod
    def solid(region):
        """A mask covering the whole region."""
        ys, xs = region
        return np.ones((ys.stop - ys.start, xs.stop - xs.start), bool)

    def ellipse(self, region, cy, cx, ry, rx):
        """Mask of the axis-aligned ellipse centred at (cy, cx) in region."""
        ys, xs = region
        return ((self.ys[ys] - cy) / ry) ** 2 + ((self.xs[:, xs] - cx) / rx) ** 2 <= 1.0


def _value_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    """Smooth noise (unit variance at the grid points): a random grid with
    spacing ``cell`` pixels, bilinearly upsampled with a smoothstep."""
    grid = rng.standard_normal((h // cell + 2, w // cell + 2), dtype=np.float32)

    def axis(n):
        f = np.arange(n, dtype=np.float32) / cell
        i = f.astype(np.int64)
        t = f - i
        return i, t * t * (3 - 2 * t)

    iy, ty = axis(h)
    ix, tx = axis(w)
    rows = grid[iy] * (1 - ty[:, None]) + grid[iy + 1] * ty[:, None]
    return rows[:, ix] * (1 - tx) + rows[:, ix + 1] * tx


def _jitter(rng, colour, amount):
    return np.clip(colour + rng.uniform(-amount, amount, 3), 0, 255).astype(np.float32)


# --------------------------------------------------------------------------
# Background layers: sky, ground, buildings.
# --------------------------------------------------------------------------

def _sky(c: _Canvas, rng, st: _Street):
    kind = rng.integers(3)
    if kind == 0:    # clear
        top, bottom = (60, 110, 185), (165, 195, 230)
    elif kind == 1:  # overcast: greys like the road and the buildings
        top, bottom = (150, 152, 160), (205, 205, 208)
    else:            # hazy evening
        top, bottom = (105, 115, 150), (225, 185, 150)
    top, bottom = _jitter(rng, np.array(top), 20), _jitter(rng, np.array(bottom), 20)
    # Only above the horizon: the ground covers the rest.
    ys, xs = region = c.box(0, st.horizon + 1, 0, c.w)
    t = np.clip(c.ys[ys] / max(st.horizon, 1.0), 0, 1)[..., None]
    clouds = rng.uniform(10, 45) * np.maximum(c.blotch[ys] - 0.3, 0)[..., None]
    colour = top + (bottom - top) * t + clouds
    c.paint(region, c.solid(region), colour, SKY, grain=1.5)


def _ground(c: _Canvas, rng, st: _Street):
    """Terrain, road (with lane marks) and sidewalks (paving tiles and a kerb)
    below the horizon.  They are intervals of the lateral position
    X = (x - vx) / (s * unit) on each row; every pixel gets a material whose
    colour, texture and class are looked up in one pass."""
    ys, xs = region = c.box(st.horizon, c.h, 0, c.w)    # the horizon is mid-image
    s = np.maximum((c.ys[ys] - st.horizon) / (st.unit * st.cam_h), 1e-3)   # (h, 1)
    lateral = (c.xs - st.vx) / (s * st.unit) - st.centre                   # from road centre
    depth = 1.0 / s

    grass = _jitter(rng, _GREENS[rng.integers(len(_GREENS))] + rng.uniform(0, 40), 15)
    asphalt = np.full(3, rng.uniform(75, 125), np.float32) + rng.uniform(-5, 5, 3)
    paint = np.full(3, rng.uniform(190, 235), np.float32)
    paver = (_jitter(rng, np.array((150, 112, 100)), 12) if rng.random() < 0.3
             else np.full(3, rng.uniform(110, 165), np.float32))
    # Materials: terrain, asphalt, lane mark, tile, grout, kerb.
    colours = np.stack([grass, asphalt, paint, paver, paver - 25, paver + 25]).astype(np.float32)
    grains = np.array([8, 5, 4, 5, 5, 3], np.float32)
    blotches = np.array([14, 6, 0, 4, 4, 0], np.float32)
    classes = np.array([TERRAIN, ROAD, ROAD, SIDEWALK, SIDEWALK, SIDEWALK], np.uint8)

    off = np.abs(lateral)
    road = off < st.half_road
    walk = ~road & (off < st.half_road + np.where(lateral < 0, st.walk_left, st.walk_right))
    kerb = walk & (off < st.half_road + 0.15)
    # Lane marks (white: colour alone does not say "road"): dashed centre and
    # lane lines, dashes uniform in depth, and solid edge lines.
    mark_w = 0.07
    dashed = np.abs(lateral) < mark_w
    if st.half_road > 5:
        dashed |= np.abs(off - st.half_road / 2) < mark_w
    dashed &= (depth * rng.uniform(0.08, 0.15)) % 1.0 < 0.5
    marks = road & (dashed | (np.abs(off - (st.half_road - 0.3)) < mark_w * 0.7))
    # Grout lines between tiles; across the street they are at least one
    # pixel row thick (a row spans more depth the farther it is), but never
    # swallow the whole tile.
    tile_x, tile_z = rng.uniform(0.4, 0.8), rng.uniform(0.1, 0.2)
    row_depth = 1.0 / (s * s * st.unit * st.cam_h)
    grout = walk & ((off % tile_x < 0.05)
                    | (depth % tile_z < np.clip(row_depth, 0.01, 0.3 * tile_z)))
    material = np.select([marks, road, kerb, grout, walk], [2, 1, 5, 4, 3], 0)
    texture = grains[material] * c.grain[ys, xs] + blotches[material] * c.blotch[ys, xs]
    c.image[ys, xs] = colours[material] + texture[..., None]
    c.label[ys, xs] = classes[material]


def _far_buildings(c: _Canvas, rng, st: _Street):
    """Frontal buildings closing the street at nearness s_far, across the whole
    width (the side facades are drawn over them)."""
    s = st.s_far
    ground_y = st.y(s)
    lateral = (-st.vx / (s * st.unit)) - 1.0
    right_end = (c.w - st.vx) / (s * st.unit) + 1.0
    while lateral < right_end:
        width, height = rng.uniform(8, 25), rng.uniform(6, 30)
        present = rng.random() < 0.85
        facade = _jitter(rng, _FACADES[rng.integers(len(_FACADES))], 15)
        glass = _jitter(rng, np.array((55, 60, 75)), 15)
        region = c.box(st.y(s, height), ground_y, st.x(s, lateral), st.x(s, lateral + width))
        if present and region is not None:
            ys, xs = region
            u = (c.xs[:, xs] - st.x(s, lateral)) / (s * st.unit)    # metres along
            v = (ground_y - c.ys[ys]) / (s * st.unit)               # metres up
            win = (u % 3.0 < 1.5) & (v % 3.0 < 1.5) & (v > 3)
            c.paint(region, c.solid(region), np.where(win[..., None], glass, facade),
                    BUILDING, grain=4)
        lateral += width


def _side_plane(c: _Canvas, st: _Street, lateral: float, s_lo: float, s_hi: float):
    """Pixel coordinates of the vertical plane at ``lateral`` between nearness
    s_lo and s_hi: region, per-column depth z = 1/s (1, w) and per-pixel
    height above ground (h, w) in metres; None if not visible."""
    x_lo, x_hi = sorted((st.x(s_lo, lateral), st.x(s_hi, lateral)))
    region = c.box(0, c.h, x_lo, x_hi + 1)
    if region is None:
        return None
    ys, xs = region
    s = np.clip((c.xs[:, xs] - st.vx) / (st.unit * lateral), s_lo, s_hi)
    height = st.cam_h - (c.ys[ys] - st.horizon) / (s * st.unit)
    return region, 1.0 / s, height


def _facades(c: _Canvas, rng, st: _Street, side: int):
    """A row of buildings along one side of the street, in perspective.  The
    window grid is uniform in depth and height, so it converges correctly."""
    # Buildings are depth intervals [z_k, z_k+1) with their own height, colour
    # and window layout, looked up per column with searchsorted.
    bounds = [0.0]
    while bounds[-1] < 1.0 / st.s_far:
        bounds.append(bounds[-1] + rng.uniform(2.0, 6.0))
    bounds = np.array(bounds)
    n = len(bounds) - 1
    present = rng.random(n) < 0.9
    tops = rng.uniform(6, 25, n)
    facade = np.stack([_jitter(rng, _FACADES[rng.integers(len(_FACADES))], 15) for _ in range(n)])
    glass = np.stack([_jitter(rng, np.array((55, 60, 75)), 15) for _ in range(n)])
    period = rng.uniform(0.5, 0.9, n)         # window period along depth (z units)
    frac = rng.uniform(0.35, 0.65, n)
    floor_h = rng.uniform(2.8, 3.6, n)

    lateral = st.facade_lateral(side)
    plane = _side_plane(c, st, lateral, st.s_far, 4.0)
    if plane is not None:
        region, z, height = plane
        k = np.clip(np.searchsorted(bounds, z, side="right") - 1, 0, n - 1)
        mask = present[k] & (height >= 0) & (height < tops[k])
        win = (((z - bounds[k]) % period[k] < period[k] * frac[k])
               & (height % floor_h[k] < floor_h[k] * 0.55) & (height > 3.0)
               & (height < tops[k] - 1.0))
        c.paint(region, mask, np.where(win[..., None], glass[k], facade[k]), BUILDING,
                grain=4, blotch=5)

    # Some facades have a low wall, a fence or a hedge in front of them.
    if rng.random() < 0.5:
        inner = lateral - side * rng.uniform(0.2, 0.5)
        s_hi = rng.uniform(0.3, 1.5)
        s_lo = max(st.s_far, s_hi * rng.uniform(0.2, 0.7))
        _front(c, rng, _side_plane(c, st, inner, s_lo, s_hi))


def _front(c: _Canvas, rng, plane):
    kind = rng.integers(3)    # wall, fence, hedge
    top = rng.uniform(0.6, 1.6)
    palette = _GREENS if kind == 2 else _FACADES
    colour = _jitter(rng, palette[rng.integers(len(palette))], 20)
    fence_grey = np.full(3, rng.uniform(60, 170), np.float32)
    slat_period = rng.uniform(0.02, 0.05)
    if plane is None:
        return
    region, z, height = plane
    mask = (height >= 0) & (height < top)
    if kind == 0:
        c.paint(region, mask, colour, WALL, grain=6, blotch=8)
    elif kind == 1:
        # Slats uniform in depth plus top and bottom rails; the gaps stay
        # background, so a fence is thin structure with context behind it.
        slats = ((z % slat_period) < slat_period * 0.35) | (height > top - 0.12) | (height < 0.1)
        c.paint(region, mask & slats, fence_grey, FENCE, grain=4)
    else:
        c.paint(region, mask, colour, VEGETATION, grain=12, blotch=18)


# --------------------------------------------------------------------------
# Objects: each is drawn at a nearness s, far to near, so near ones occlude.
# Each draws all its random numbers before finding out whether it is visible,
# so a scene's layout does not depend on the image size (only its aspect).
# --------------------------------------------------------------------------

_VEHICLE_SIZE = {TRUCK: (2.5, 3.5), BUS: (2.55, 3.05), TRAIN: (2.6, 3.45)}   # metres


def _car(c: _Canvas, rng, st: _Street, s, lateral, cls):
    """Rear view of a vehicle; trucks, buses and trams are bigger boxes."""
    if cls == CAR:
        width, height = rng.uniform(1.7, 2.0), rng.uniform(1.4, 1.7)
    else:
        width, height = _VEHICLE_SIZE[cls]
        height += rng.uniform(-0.2, 0.2)
    body = _jitter(rng, _VEHICLES[rng.integers(len(_VEHICLES))], 20)
    px = s * st.unit
    x0, x1 = st.x(s, lateral - width / 2), st.x(s, lateral + width / 2)
    ground = st.y(s)
    region = c.box(ground - height * px, ground, x0, x1)
    if region is None:
        return
    ys, xs = region
    u = (c.xs[:, xs] - x0) / px                      # metres from the left side
    v = (ground - c.ys[ys]) / px                     # metres above ground
    dark = np.array((30, 30, 32), np.float32)
    if cls == CAR:
        # Cabin narrows with height; wheels at the bottom corners.
        cabin = v > 0.55 * height
        inset = np.where(cabin, 0.12 * width + 0.35 * (v - 0.55 * height), 0.0)
        shape = (u >= inset) & (u <= width - inset) & (v >= 0.25)
        wheels = (v < 0.45) & ((u < 0.3) | (u > width - 0.3))
        window = cabin & (u > inset + 0.12) & (u < width - inset - 0.12) & (v < height - 0.1)
        lights = (v > 0.8) & (v < 0.55 * height) & ((u < 0.3) | (u > width - 0.3))
    else:
        shape = v >= 0.3
        wheels = (v < 0.5) & ((u < 0.45) | (u > width - 0.45))
        # A truck's cargo box has no rear window.
        window = ((v > height * 0.55) & (v < height - 0.25) & (u > 0.2) & (u < width - 0.2)
                  & (cls != TRUCK))
        lights = (v > 0.4) & (v < 0.7) & ((u < 0.25) | (u > width - 0.25))
    colour = np.where(window[..., None], dark + 20, body)
    colour = np.where(lights[..., None], np.array((200, 30, 30), np.float32), colour)
    colour = np.where((wheels & ~shape)[..., None], dark, colour)
    c.paint(region, shape | wheels, colour, cls, grain=3)
    # The shadow under the body is road, darker: context, not colour, says so.
    under = (v < 0.3) & ~wheels & (u > 0) & (u < width)
    c.image[ys, xs][under] *= 0.45


def _person(c: _Canvas, rng, st: _Street, s, lateral, cls=PERSON, base=0.0):
    """Front/back view of a pedestrian (or a rider, ``base`` metres up on a
    two-wheeler): head, torso, legs."""
    tall = rng.uniform(1.5, 1.9) - (0.7 if cls == RIDER else 0.0)
    stride = rng.uniform(0.0, 0.12)
    shirt, trousers = (_jitter(rng, _CLOTHES[rng.integers(len(_CLOTHES))], 20) for _ in range(2))
    skin = _jitter(rng, np.array((180, 140, 115)), 35)
    px = s * st.unit
    ground = st.y(s, base)
    cx = st.x(s, lateral)
    region = c.box(ground - (tall + 0.05) * px, ground, cx - 0.35 * px, cx + 0.35 * px)
    if region is None:
        return
    ys, xs = region
    u = (c.xs[:, xs] - cx) / px
    v = (ground - c.ys[ys]) / px
    head_r = 0.11
    head = (u ** 2 + (v - (tall - head_r)) ** 2) <= head_r ** 2
    torso_lo = 0.0 if cls == RIDER else tall * 0.47
    torso = (v >= torso_lo) & (v < tall - 2 * head_r) & (np.abs(u) < 0.2 - 0.04 * (v < tall * 0.6))
    legs = ((v < tall * 0.47) & (np.abs(np.abs(u) - 0.08 - stride * (1 - v / tall)) < 0.065)
            & (cls != RIDER))    # a rider's legs are hidden by the vehicle
    colour = np.where(head[..., None], skin, np.where(torso[..., None], shirt, trousers))
    c.paint(region, head | torso | legs, colour, cls, grain=5)


def _two_wheeler(c: _Canvas, rng, st: _Street, s, lateral, cls):
    """Side view of a bicycle (spoked, background shows through) or a
    motorcycle (solid), with its rider."""
    colour = _jitter(rng, _VEHICLES[rng.integers(len(_VEHICLES))], 25)
    length, r = (1.7, 0.34) if cls == BICYCLE else (2.0, 0.3)
    px = s * st.unit
    ground = st.y(s)
    cx = st.x(s, lateral)
    region = c.box(ground - 1.1 * px, ground, cx - length / 2 * px, cx + length / 2 * px)
    if region is not None:
        ys, xs = region
        u = (c.xs[:, xs] - cx) / px
        v = (ground - c.ys[ys]) / px
        wheels = np.zeros((v.shape[0], u.shape[1]), bool)
        for wx in (-length / 2 + r, length / 2 - r):
            d = np.sqrt((u - wx) ** 2 + (v - r) ** 2)
            wheels |= (d <= r) & (d >= r - 0.06) if cls == BICYCLE else (d <= r)
        if cls == BICYCLE:
            frame = (np.abs(v - (r + 0.3)) < 0.03) & (np.abs(u) < length / 2 - r)
            frame |= (np.abs(u - (v - r) * 0.3) < 0.03) & (v > r) & (v < r + 0.55)
        else:
            frame = (v > r * 0.8) & (v < r + 0.55) & (np.abs(u) < length / 2 - r * 0.5)
        c.paint(region, wheels | frame, np.where(frame[..., None], colour, 35.0), cls, grain=3)
    _person(c, rng, st, s, lateral, cls=RIDER, base=r + 0.55)


_SIGN_COLOURS = np.array([(200, 40, 40), (40, 80, 170), (230, 230, 230), (220, 190, 40)],
                         np.float32)
_LAMP_COLOURS = np.array([(240, 50, 40), (245, 180, 40), (60, 230, 120)], np.float32)


def _pole(c: _Canvas, rng, st: _Street, s, lateral):
    """A pole, optionally topped by a traffic sign or a traffic light."""
    tall, width = rng.uniform(3.0, 7.0), rng.uniform(0.12, 0.25)
    grey = np.full(3, rng.uniform(90, 170), np.float32)
    kind = rng.random()       # < 0.4 sign, < 0.7 traffic light, else bare
    sign_size = rng.uniform(0.5, 0.8)
    sign_colour = _jitter(rng, _SIGN_COLOURS[rng.integers(len(_SIGN_COLOURS))], 15)
    round_sign = rng.random() < 0.5
    lamp = rng.integers(3)
    housing = np.full(3, rng.uniform(25, 60), np.float32)

    px = s * st.unit
    cx, ground = st.x(s, lateral), st.y(s)
    region = c.box(ground - tall * px, ground, cx - width / 2 * px, cx + width / 2 * px + 1)
    if region is not None:
        c.paint(region, c.solid(region), grey, POLE, grain=4)
    top = ground - tall * px
    if kind < 0.4:
        half = sign_size / 2 * px
        region = c.box(top - half, top + half, cx - half, cx + half)
        if region is not None:
            shape = c.ellipse(region, top, cx, half, half) if round_sign else c.solid(region)
            c.paint(region, shape, sign_colour, SIGN, grain=4)
    elif kind < 0.7:          # dark housing, one of three lamps lit
        hw, hh = 0.18 * px, 0.5 * px
        region = c.box(top - hh, top + hh, cx - hw, cx + hw)
        if region is not None:
            lit = c.ellipse(region, top - hh + (2 * lamp + 1) * hh / 3, cx, hh / 4, hw * 0.7)
            c.paint(region, c.solid(region), np.where(lit[..., None], _LAMP_COLOURS[lamp], housing),
                    LIGHT, grain=3)


def _tree(c: _Canvas, rng, st: _Street, s, lateral):
    """Trunk and a crown made of overlapping discs with a ragged edge."""
    trunk_h, crown_r = rng.uniform(1.8, 3.5), rng.uniform(1.2, 3.0)
    green = _jitter(rng, _GREENS[rng.integers(len(_GREENS))], 20)
    bark = _jitter(rng, np.array((85, 65, 50)), 15)
    discs = rng.uniform((-0.6, -0.6, 0.6), (0.6, 0.6, 1.0), (4, 3))   # dy, dx, radius / crown_r

    px = s * st.unit
    cx, ground = st.x(s, lateral), st.y(s)
    region = c.box(ground - trunk_h * px, ground, cx - 0.15 * px, cx + 0.15 * px + 1)
    if region is not None:
        c.paint(region, c.solid(region), bark, VEGETATION, grain=6)
    cy = ground - (trunk_h + crown_r * 0.7) * px
    r = crown_r * px
    region = c.box(cy - 1.6 * r, cy + 1.6 * r, cx - 1.6 * r, cx + 1.6 * r)
    if region is None:
        return
    ys, xs = region
    ragged = 1.0 + 0.25 * c.blotch[ys, xs]
    crown = np.zeros(ragged.shape, bool)
    for dy, dx, rr in discs * r:
        crown |= ((c.ys[ys] - cy - dy) ** 2 + (c.xs[:, xs] - cx - dx) ** 2) / rr ** 2 <= ragged
    c.paint(region, crown, green, VEGETATION, grain=14, blotch=20)


def _objects(c: _Canvas, rng, st: _Street):
    """Place things in metres along the street, then draw far to near."""
    s_min = st.s_far * 1.3
    items = []

    def near():  # nearness spread like real depths: many far, few near
        return float(np.exp(rng.uniform(np.log(s_min), np.log(0.9))))

    road_l, road_r = st.centre - st.half_road, st.centre + st.half_road
    for _ in range(rng.integers(1, 6)):
        cls = CAR if rng.random() < 0.8 else (TRUCK, BUS, TRAIN)[rng.integers(3)]
        if rng.random() < 0.4:       # parked at the kerb
            lateral = road_l + 1.2 if rng.random() < 0.5 else road_r - 1.2
        else:
            lateral = rng.uniform(road_l + 1.3, road_r - 1.3)
        items.append((near(), _car, (lateral, cls)))
    for _ in range(rng.integers(0, 3)):
        cls = BICYCLE if rng.random() < 0.6 else MOTORCYCLE
        items.append((near(), _two_wheeler, (rng.uniform(road_l + 0.8, road_r - 0.8), cls)))
    for side in (-1, 1):
        edge = st.centre + side * st.half_road
        walk = st.walk_left if side < 0 else st.walk_right
        outer = st.facade_lateral(side)      # sidewalk (and terrain strip) end here
        for _ in range(rng.integers(1, 6)):
            items.append((near(), _person, (edge + side * rng.uniform(0.4, walk),)))
        for _ in range(rng.integers(0, 4)):
            items.append((near(), _pole, (edge + side * 0.4,)))
        for _ in range(rng.integers(0, 4)):
            items.append((near(), _tree, (outer - side * rng.uniform(0.5, 1.0),)))
    # Sort on nearness alone (never compares the functions).
    for s, draw, args in sorted(items, key=lambda item: item[0]):
        draw(c, rng, st, s, *args)


# --------------------------------------------------------------------------
# Photometry and ignore regions.
# --------------------------------------------------------------------------

def _finish(c: _Canvas, rng, noise_rng, st: _Street) -> tuple[np.ndarray, np.ndarray]:
    image, label = c.image, c.label
    # A cast shadow over part of the street: below the horizon, on one side of
    # a random line.
    if rng.random() < 0.6:
        angle = rng.uniform(0, np.pi)
        px, py = rng.uniform(0, c.w), rng.uniform(st.horizon, c.h)
        side = ((c.xs - px) * np.cos(angle) + (c.ys - py) * np.sin(angle) > 0) & (c.ys > st.horizon)
        image *= np.where(side, rng.uniform(0.5, 0.8), 1.0).astype(np.float32)[..., None]

    # Ignore a 1-pixel border around things, where real annotations are least
    # sure, and the ego vehicle's bonnet at the bottom in half of the scenes.
    things = _THINGS[label]
    border = np.zeros_like(things)
    for axis in (0, 1):
        diff = np.diff(label, axis=axis) != 0
        lo = [slice(None)] * 2
        hi = [slice(None)] * 2
        lo[axis], hi[axis] = slice(0, -1), slice(1, None)
        border[tuple(lo)] |= diff & things[tuple(lo)]
        border[tuple(hi)] |= diff & things[tuple(hi)]
    label[border] = IGNORE_INDEX
    if rng.random() < 0.5:
        depth = rng.uniform(0.05, 0.12) * c.h
        bonnet = c.ys > c.h - depth * (1 - 0.6 * ((c.xs - c.w / 2) / (c.w / 2)) ** 2)
        image[bonnet] = _jitter(rng, _VEHICLES[rng.integers(len(_VEHICLES))], 20) * 0.6
        label[bonnet] = IGNORE_INDEX

    contrast = rng.uniform(0.7, 1.3)
    brightness = rng.uniform(0.65, 1.35)
    cast = rng.uniform(0.85, 1.15, 3).astype(np.float32)
    image = ((image - 128.0) * contrast + 128.0) * (brightness * cast)
    image += noise_rng.standard_normal(image.shape, dtype=np.float32) * rng.uniform(2, 7)
    return np.clip(image + 0.5, 0, 255).astype(np.uint8), label


def render_scene(seed: int, height: int = 256, width: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Render one street scene.

    Returns ``(image, label)``: uint8 (height, width, 3) RGB and uint8
    (height, width) trainIds with 255 = ignore.  Same seed -> identical output.
    """
    if height < 8 or width < 8:
        raise ValueError(f"scene size must be at least 8x8, got {height}x{width}")
    # Layout and colours come from one stream and pixel noise from another, so
    # the amount of noise drawn (which grows with the size) cannot shift the
    # layout: the same seed at another size of the same aspect ratio gives
    # the same scene.
    rng, noise_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    horizon = rng.uniform(0.35, 0.5) * height
    cam_h = rng.uniform(1.3, 1.7)
    half_road = rng.uniform(3.5, 7.5)
    st = _Street(
        horizon=horizon, vx=rng.uniform(0.35, 0.65) * width,
        unit=(height - horizon) / cam_h, cam_h=cam_h,
        centre=rng.uniform(-0.4, 0.4) * half_road, half_road=half_road,
        walk_left=rng.uniform(1.5, 4.0), walk_right=rng.uniform(1.5, 4.0),
        gap_left=0.0 if rng.random() < 0.6 else rng.uniform(1.0, 5.0),
        gap_right=0.0 if rng.random() < 0.6 else rng.uniform(1.0, 5.0),
        s_far=float(np.exp(rng.uniform(np.log(0.03), np.log(0.15)))))
    c = _Canvas(noise_rng, height, width)
    _sky(c, rng, st)
    _ground(c, rng, st)
    _far_buildings(c, rng, st)
    for side in (-1, 1):
        if rng.random() < 0.8:
            _facades(c, rng, st, side)
    _objects(c, rng, st)
    return _finish(c, rng, noise_rng, st)


# --------------------------------------------------------------------------
# Data sets.
# --------------------------------------------------------------------------

_SPLITS = ("train", "val")


def scene_seed(seed: int, split: str, index: int) -> int:
    """Seed of scene ``index`` of ``split``.  Train seeds are even and val seeds
    odd, so the two splits never share a scene, for any ``seed`` and length."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {_SPLITS}, got {split!r}")
    if seed < 0 or not 0 <= index < 2**32:
        raise ValueError(f"need seed >= 0 and 0 <= index < 2**32, got {seed}, {index}")
    return 2 * (seed * 2**32 + index) + _SPLITS.index(split)


class SyntheticScenes(TransformedSamples):
    """``length`` synthetic scenes of ``size`` (H, W), rendered on access.

    Items are ``(FloatTensor[3,H,W] normalised with ImageNet mean/std,
    LongTensor[H,W] trainIds, 255 = ignore)``; ``transform(image, label,
    index)`` replaces the plain normalisation (see ``transforms``).

    Rendered scenes are kept (as uint8 arrays, copied out on every access)
    until ``cache_mb`` of them are held: a scene is the same every time its
    seed renders it, and rendering it again each epoch was about 5 % of the
    default search's time (profiled; a 64×128 scene is 32 KB, so the default
    256 MB holds about 8,000). 0 turns the cache off.
    """

    def __init__(self, split: str = "train", size: tuple[int, int] = (256, 512),
                 length: int = 64, seed: int = 0, transform=None, cache_mb: float = 256):
        scene_seed(seed, split, 0)    # validates split and seed
        if cache_mb < 0:
            raise ValueError(f"cache_mb must be >= 0, got {cache_mb}")
        self.split, self.size, self.length, self.seed = split, tuple(size), length, seed
        self.transform = transform if transform is not None else ValTransform()
        self.cache_mb = cache_mb
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._cached_bytes = 0

    def __len__(self) -> int:
        return self.length

    def sample(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The raw uint8 (image, trainIds) of item ``index``."""
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} scenes")
        cached = self._cache.get(index)
        if cached is None:
            cached = render_scene(scene_seed(self.seed, self.split, index), *self.size)
            size = cached[0].nbytes + cached[1].nbytes
            if self._cached_bytes + size <= self.cache_mb * 2**20:
                self._cache[index] = cached
                self._cached_bytes += size
                cached = self._cache[index]
            else:
                return cached
        # copies: a transform may write into the arrays it is given
        return cached[0].copy(), cached[1].copy()


def write_cityscapes_layout(root: str | os.PathLike, splits: dict[str, int] | None = None,
                            size: tuple[int, int] = (256, 512), seed: int = 0) -> list[str]:
    """Write synthetic scenes as an official Cityscapes tree under ``root``:
    ``leftImg8bit/{split}/{city}/{city}_{seq:06d}_000019_leftImg8bit.png`` and
    ``gtFine/{split}/{city}/{city}_{seq:06d}_000019_gtFine_labelIds.png``.

    Scene ``seq`` of a split is ``SyntheticScenes(split, size, seed=seed)[seq]``.
    Each split is divided into two cities, in contiguous blocks, so that the
    sorted file order is the scene order.  Returns the image paths written.
    """
    splits = {"train": 3, "val": 2} if splits is None else splits
    jobs = []
    for split, count in splits.items():
        cities = [f"synth{split}{k}" for k in range(min(2, count))]
        for seq in range(count):
            jobs.append((split, cities[seq * len(cities) // count], seq))
    written = []
    # Progress only for big trees: small ones (tests, demos) finish instantly.
    for split, city, seq in tqdm(jobs, desc="writing synthetic Cityscapes", unit="img",
                                 disable=len(jobs) < 100):
        image, train_ids = render_scene(scene_seed(seed, split, seq), *size)
        stem = f"{city}_{seq:06d}_000019"
        img_dir = os.path.join(root, "leftImg8bit", split, city)
        gt_dir = os.path.join(root, "gtFine", split, city)
        os.makedirs(img_dir, exist_ok=True)
        os.makedirs(gt_dir, exist_ok=True)
        img_path = os.path.join(img_dir, f"{stem}_leftImg8bit.png")
        Image.fromarray(image).save(img_path)
        Image.fromarray(trainid_to_labelid(train_ids)).save(
            os.path.join(gt_dir, f"{stem}_gtFine_labelIds.png"))
        written.append(img_path)
    return written
