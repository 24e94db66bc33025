"""One synthetic person: the appearance fixed per identity (:class:`Identity`) and the label map of that
person seen from a view in a walking pose (painted back to front in person coordinates)."""

from __future__ import annotations

import colorsys
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from pfanet_cli.data.synthetic import nir
from pfanet_cli.data.synthetic.plan import STREAM_IDENTITY

# Label map values (the renderer paints labels, then colours them per modality).
BG, SKIN, HAIR, TOP, TOP_B, BOTTOM, SHOES, BAG, HAT, STRAP = range(10)
N_LABELS = 10

_NEUTRALS = np.array(
    [[0.08, 0.08, 0.09], [0.18, 0.18, 0.2], [0.45, 0.45, 0.47], [0.75, 0.75, 0.74], [0.93, 0.93, 0.9],
     [0.12, 0.15, 0.32], [0.76, 0.68, 0.52], [0.35, 0.25, 0.18]],
    dtype=np.float32,
)
_HAIR_COLOURS = np.array(
    [[0.05, 0.04, 0.04], [0.16, 0.1, 0.06], [0.33, 0.21, 0.12], [0.72, 0.58, 0.32], [0.6, 0.6, 0.6]],
    dtype=np.float32,
)
_HAIR_COLOUR_P = np.array([0.42, 0.26, 0.16, 0.1, 0.06])


def _garment_colour(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.3:
        base = _NEUTRALS[int(rng.integers(0, len(_NEUTRALS)))]
        return np.clip(base * rng.uniform(0.9, 1.1), 0, 1).astype(np.float32)
    hue = rng.random()
    sat = rng.uniform(0.45, 0.95)
    val = rng.uniform(0.35, 0.95)
    return np.array(colorsys.hsv_to_rgb(hue, sat, val), dtype=np.float32)


def _contrasting_colour(rng: np.random.Generator, other: np.ndarray) -> np.ndarray:
    """A colour clearly different from ``other`` (so a pattern is visible in RGB)."""
    best, best_d = None, -1.0
    for _ in range(8):
        c = _garment_colour(rng)
        d = float(np.abs(c - other).sum())
        if d > best_d:
            best, best_d = c, d
        if d > 0.6:
            break
    return best


def _independent_intensity(rng: np.random.Generator, lo: float = 0.15, hi: float = 0.78) -> float:
    return float(rng.uniform(lo, hi))


@dataclass(frozen=True, eq=False)
class Identity:
    """Everything that is fixed for one person (lengths in units of the person's height)."""

    pid: int
    height: float          # fraction of the image height the person fills
    shoulder: float        # shoulder half-width
    hip: float             # hip half-width
    head_ru: float
    head_rv: float
    hip_v: float           # hip line, from the top of the head
    top_end: float         # where the top garment ends (below the hip for long tops / coats)
    coat: bool
    sleeve: float          # sleeve length as a fraction of the arm (0 = sleeveless)
    bottom: str            # trousers | shorts | skirt
    bottom_len: float      # shorts / skirt length below the hip
    pattern: str           # solid | hstripes | vstripes | checks | block | logo
    period: float
    duty: float
    phase: float
    logo_shape: str
    logo_size: float
    logo_offset: float
    bag: str               # none | left | right | backpack
    bag_w: float
    bag_h: float
    hair: str              # buzz | short | long | ponytail
    hat: bool
    shoe_h: float
    rgb: np.ndarray = field(repr=False)   # (N_LABELS, 3) colours
    ir: np.ndarray = field(repr=False)    # (N_LABELS,) near-infrared intensities
    material: np.ndarray = field(repr=False)  # (N_LABELS,) material classes (nir.MATERIALS), nir.NONE for BG


def draw_identity(seed: int, pid: int, ir_residual: float = nir.DEFAULT_IR_RESIDUAL) -> Identity:
    """The appearance of person ``pid`` (independent of preset, camera and image). ``ir_residual`` is the share of
    each material's IR intensity that is unrelated to its colour (``nir.py``)."""
    rng = np.random.default_rng([seed, STREAM_IDENTITY, pid])
    height = rng.uniform(0.78, 0.95)
    shoulder = rng.uniform(0.085, 0.13)
    hip = shoulder * rng.uniform(0.78, 1.0)
    head_ru = rng.uniform(0.047, 0.058)
    head_rv = rng.uniform(0.062, 0.072)
    hip_v = rng.uniform(0.49, 0.55)
    coat = rng.random() < 0.12
    top_end = hip_v + (rng.uniform(0.2, 0.27) if coat else rng.uniform(-0.03, 0.07))
    sleeve = float(rng.choice([0.0, 0.4, 1.0], p=[0.15, 0.4, 0.45]))
    if coat:
        sleeve = 1.0
    bottom = str(rng.choice(["trousers", "shorts", "skirt"], p=[0.55, 0.22, 0.23]))
    bottom_len = rng.uniform(0.14, 0.2) if bottom == "shorts" else rng.uniform(0.17, 0.32)
    pattern = str(rng.choice(["solid", "hstripes", "vstripes", "checks", "block", "logo"],
                             p=[0.2, 0.18, 0.16, 0.14, 0.14, 0.18]))
    period = rng.uniform(0.075, 0.12)
    duty = rng.uniform(0.4, 0.55)
    phase = rng.random()
    logo_shape = str(rng.choice(["circle", "square", "diamond", "triangle"]))
    logo_size = rng.uniform(0.04, 0.058)
    logo_offset = float(rng.choice([0.0, -0.45, 0.45]))
    bag = str(rng.choice(["none", "left", "right", "backpack"], p=[0.3, 0.2, 0.2, 0.3]))
    bag_w = rng.uniform(0.09, 0.13)
    bag_h = rng.uniform(0.09, 0.14) if bag in ("left", "right") else rng.uniform(0.2, 0.27)
    hair = str(rng.choice(["buzz", "short", "long", "ponytail"], p=[0.15, 0.35, 0.3, 0.2]))
    hat = rng.random() < 0.18
    shoe_h = rng.uniform(0.028, 0.045)

    rgb = np.zeros((N_LABELS, 3), dtype=np.float32)
    skin_t = rng.random()
    rgb[SKIN] = (1 - skin_t) * np.array([0.95, 0.78, 0.66]) + skin_t * np.array([0.42, 0.28, 0.2])
    rgb[HAIR] = _HAIR_COLOURS[int(rng.choice(len(_HAIR_COLOURS), p=_HAIR_COLOUR_P))] * rng.uniform(0.9, 1.1)
    rgb[TOP] = _garment_colour(rng)
    rgb[TOP_B] = _contrasting_colour(rng, rgb[TOP])
    rgb[BOTTOM] = _garment_colour(rng)
    rgb[SHOES] = _NEUTRALS[int(rng.choice([0, 1, 2, 4, 7]))] if rng.random() < 0.75 else _garment_colour(rng)
    rgb[BAG] = _garment_colour(rng)
    rgb[STRAP] = rgb[BAG] * 0.75
    rgb[HAT] = _garment_colour(rng)

    rgb = np.clip(rgb, 0, 1)
    material = _draw_materials(np.random.default_rng([seed, STREAM_IDENTITY, pid, 2]), rgb)
    predicted = np.array([nir.nir_reflectance(rgb[k], material[k]) if material[k] != nir.NONE else 0.0
                          for k in range(N_LABELS)])
    residual = _independent_draws(np.random.default_rng([seed, STREAM_IDENTITY, pid, 1]))
    ir = np.array([nir.mix_residual(p, e, ir_residual) for p, e in zip(predicted, residual)], dtype=np.float32)
    return Identity(pid, height, shoulder, hip, head_ru, head_rv, hip_v, top_end, coat, sleeve, bottom,
                    bottom_len, pattern, period, duty, phase, logo_shape, logo_size, logo_offset, bag, bag_w,
                    bag_h, hair, hat, shoe_h, rgb, ir, material)


def _draw_materials(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    """The material class of every label: skin, hair, and dye or carbon black for each garment part (its own
    generator, so the colours and the residual draws are those of earlier versions)."""
    material = np.full(N_LABELS, nir.NONE, dtype=np.int8)
    material[SKIN], material[HAIR] = nir.SKIN, nir.HAIR
    for label in (TOP, TOP_B, BOTTOM, SHOES, BAG, HAT):
        material[label] = nir.draw_garment_material(rng, rgb[label], shoes=label == SHOES)
    material[STRAP] = material[BAG]
    return material


def _independent_draws(erng: np.random.Generator) -> np.ndarray:
    """The IR intensities of versions up to 0.1, drawn independently of the colours (the residual of ``nir.py``):
    the same generator, draws and order, so ``ir_residual=1`` reproduces that data bit for bit."""
    ir = np.zeros(N_LABELS, dtype=np.float32)
    ir[SKIN] = erng.uniform(0.86, 0.98)
    ir[HAIR] = erng.uniform(0.3, 0.5)
    ir[TOP] = _independent_intensity(erng)
    second = _independent_intensity(erng)
    while abs(second - ir[TOP]) < 0.25:  # versions up to 0.1 forced a pattern to show in IR
        second = _independent_intensity(erng)
    ir[TOP_B] = second
    ir[BOTTOM] = _independent_intensity(erng)
    ir[SHOES] = _independent_intensity(erng, 0.15, 0.5)
    ir[BAG] = _independent_intensity(erng, 0.12, 0.6)
    ir[STRAP] = ir[BAG]
    ir[HAT] = _independent_intensity(erng, 0.2, 0.6)
    return ir


class _Painter:
    """Paints shapes given in person coordinates (u across, v down, both in person heights) into a
    label map, touching only the rows a shape spans."""

    def __init__(self, u: np.ndarray, v: np.ndarray) -> None:
        self.u = u[None, :]
        self.v = v
        self.labels = np.zeros((len(v), len(u)), dtype=np.uint8)

    def rows(self, v0: float, v1: float) -> tuple[int, int]:
        return int(np.searchsorted(self.v, v0)), int(np.searchsorted(self.v, v1))

    def paint(self, label: int, v0: float, v1: float,
              fn: Callable[[np.ndarray, np.ndarray], np.ndarray], where: int | None = None) -> None:
        r0, r1 = self.rows(v0, v1)
        if r1 <= r0:
            return
        mask = fn(self.u, self.v[r0:r1, None])
        block = self.labels[r0:r1]
        if where is not None:
            mask = mask & (block == where)
        block[mask] = label

    def band(self, label: int, v0: float, v1: float, uc: float, hw0: float, hw1: float | None = None,
             tilt: float = 0.0, where: int | None = None) -> None:
        """A (possibly slanted, tapering) vertical band from v0 to v1 centred at uc at v0."""
        hw1 = hw0 if hw1 is None else hw1
        span = max(v1 - v0, 1e-6)

        def fn(u, v):
            t = (v - v0) / span
            return np.abs(u - (uc + (v - v0) * tilt)) <= hw0 + (hw1 - hw0) * t

        self.paint(label, v0, v1, fn, where)

    def ellipse(self, label: int, uc: float, vc: float, ru: float, rv: float,
                clip: tuple[float, float] | None = None) -> None:
        v0, v1 = vc - rv, vc + rv
        if clip is not None:
            v0, v1 = max(v0, clip[0]), min(v1, clip[1])
        self.paint(label, v0, v1, lambda u, v: ((u - uc) / ru) ** 2 + ((v - vc) / rv) ** 2 <= 1.0)

    def rect(self, label: int, u0: float, u1: float, v0: float, v1: float) -> None:
        self.paint(label, v0, v1, lambda u, v: (u >= u0) & (u <= u1) & (v >= v0))


@dataclass(frozen=True)
class _Figure:
    """Where the parts of a person lie in one image (person coordinates: u across, v down)."""

    view: str
    side: bool        # a side view (left or right)
    d: float          # facing direction in the image for side views (+1: facing right)
    s: float          # width scale of the view (a side view is narrower)
    sw: float         # shoulder half-width in this view
    hw: float         # hip half-width in this view
    arm: float        # arm half-width
    leg: float        # leg half-width
    v_sh: float       # shoulder line
    vc: float         # head centre
    ru: float         # head radii
    rv: float
    v_hip: float
    v_foot: float
    v_wrist: float
    swing: float      # arm swing (tilt)
    stride: float     # leg stride (tilt)
    bag_dir: float    # image side a shoulder bag hangs on from the front or back (+1 right, -1 left, 0 none)
    bag_near: bool    # a side view shows the shoulder bag in front of the body


def _figure(ident: Identity, view: str, pose: dict) -> _Figure:
    side = view in ("left", "right")
    s = 0.6 if side else 1.0
    # the person's left is the image's right from the front
    bag_dir = 0.0
    if ident.bag in ("left", "right"):
        person_left = ident.bag == "left"
        if view == "front":
            bag_dir = 1.0 if person_left else -1.0
        elif view == "back":
            bag_dir = -1.0 if person_left else 1.0
    return _Figure(
        view=view, side=side, d=1.0 if view == "right" else -1.0, s=s,
        sw=ident.shoulder * s, hw=ident.hip * s, arm=0.2 * ident.shoulder + 0.009, leg=0.42 * ident.hip,
        v_sh=0.145 + ident.head_rv - 0.066, vc=ident.head_rv, ru=ident.head_ru, rv=ident.head_rv,
        v_hip=ident.hip_v, v_foot=1.0 - ident.shoe_h * 0.6, v_wrist=ident.hip_v + 0.03,
        swing=pose["swing"], stride=pose["stride"], bag_dir=bag_dir,
        bag_near=side and ((ident.bag == "left") == (view == "left")),
    )


def paint_person(ident: Identity, view: str, pose: dict, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The label map of one person seen from ``view`` (painter's algorithm, back to front)."""
    p = _Painter(u, v)
    g = _figure(ident, view, pose)
    _paint_behind_body(p, ident, g)
    _paint_legs(p, ident, g)
    _paint_torso_and_arms(p, ident, g)
    _paint_head(p, ident, g)
    _paint_over_body(p, ident, g)
    if ident.pattern != "solid":
        _paint_pattern(p, ident, g)
    return p.labels


def _paint_behind_body(p: _Painter, ident: Identity, g: _Figure) -> None:
    """Long hair, a backpack seen from the front or side, the far shoulder bag and the far arm."""
    d, ru = g.d, g.ru
    if ident.hair == "long" and g.view == "front":
        p.rect(HAIR, -ru * 1.12, ru * 1.12, g.vc, g.vc + 0.16)
    if ident.hair == "long" and g.side:
        p.rect(HAIR, -d * ru * 1.1 if d > 0 else 0.0, 0.0 if d > 0 else ru * 1.1, g.vc, g.vc + 0.15)
    if ident.bag == "backpack":
        top = g.v_sh + 0.015
        if g.view == "front":
            p.rect(BAG, -ident.shoulder * 1.02, ident.shoulder * 1.02, top, top + ident.bag_h)
        elif g.side:
            u0 = -d * g.sw * 0.7
            u1 = -d * (g.sw + ident.bag_w * 0.75)
            p.rect(BAG, min(u0, u1), max(u0, u1), top, top + ident.bag_h)
    if g.side and ident.bag in ("left", "right") and not g.bag_near:
        bv = g.v_hip - 0.05
        p.rect(BAG, -d * 0.01 - ident.bag_w * 0.5, -d * 0.01 + ident.bag_w * 0.5, bv, bv + ident.bag_h)
    if g.side:  # far arm
        p.band(SKIN, g.v_sh + 0.01, g.v_wrist + 0.04, 0.0, g.arm * 0.9, tilt=-g.swing)
        if ident.sleeve > 0:
            p.band(TOP, g.v_sh + 0.01, g.v_sh + 0.01 + ident.sleeve * (g.v_wrist - g.v_sh), 0.0, g.arm * 1.05,
                   tilt=-g.swing)


def _paint_legs(p: _Painter, ident: Identity, g: _Figure) -> None:
    """Legs, the bottom garment and shoes."""
    leg, v_hip, v_foot = g.leg, g.v_hip, g.v_foot
    if g.side:
        legs = [(0.0, g.stride), (0.0, -g.stride)]
    else:
        legs = [(-(g.hw - leg), -g.stride * 0.15), ((g.hw - leg), g.stride * 0.15)]
    for uc, tilt in legs:
        p.band(SKIN, v_hip - 0.02, v_foot, uc, leg, leg * 0.72, tilt=tilt)
        if ident.bottom == "trousers":
            p.band(BOTTOM, v_hip - 0.02, v_foot, uc, leg * 1.05, leg * 0.85, tilt=tilt)
        elif ident.bottom == "shorts":
            p.band(BOTTOM, v_hip - 0.02, v_hip + ident.bottom_len, uc, leg * 1.1, leg * 1.05, tilt=tilt)
        shoe_v = v_foot - 0.01
        foot_u = uc + (shoe_v - v_hip + 0.02) * tilt
        if g.side:
            p.rect(SHOES, min(foot_u - leg * 0.8, foot_u + g.d * 0.045), max(foot_u + leg * 0.8, foot_u + g.d * 0.045),
                   shoe_v, 1.0)
        else:
            p.rect(SHOES, foot_u - leg * 0.95, foot_u + leg * 0.95, shoe_v, 1.0)
    if ident.bottom in ("trousers", "shorts"):  # the seat joins the two legs
        p.band(BOTTOM, v_hip - 0.03, v_hip + 0.05, 0.0, g.hw, g.hw * 0.9)
    elif ident.bottom == "skirt":
        p.band(BOTTOM, v_hip - 0.03, v_hip + ident.bottom_len, 0.0, g.hw * 1.02, g.hw * 1.35)


def _paint_torso_and_arms(p: _Painter, ident: Identity, g: _Figure) -> None:
    """Neck, the top garment, and the arms (front/back: both beside the torso; side: the near arm over it)."""
    sw, arm, v_sh = g.sw, g.arm, g.v_sh
    p.band(SKIN, v_sh - 0.03, v_sh + 0.01, 0.0, 0.022)
    if ident.coat:
        p.band(TOP, v_sh, ident.top_end, 0.0, sw, g.hw * 1.3)
    else:
        p.band(TOP, v_sh, ident.top_end, 0.0, sw, g.hw)
    p.ellipse(TOP, -sw + arm * 0.6, v_sh + 0.022, arm * 1.3, 0.025)
    p.ellipse(TOP, sw - arm * 0.6, v_sh + 0.022, arm * 1.3, 0.025)
    arm_len = g.v_wrist - v_sh
    if g.side:
        arms = [(0.0, g.swing)]
    else:
        arms = [(-(sw + arm * 0.55), -g.swing * 0.3), ((sw + arm * 0.55), g.swing * 0.3)]
    for uc, tilt in arms:
        p.band(SKIN, v_sh + 0.01, g.v_wrist + 0.04, uc, arm * 0.85, arm * 0.75, tilt=tilt)
        if ident.sleeve > 0:
            p.band(TOP, v_sh + 0.005, v_sh + 0.01 + ident.sleeve * arm_len, uc, arm * 1.05, arm * 0.95, tilt=tilt)


def _paint_head(p: _Painter, ident: Identity, g: _Figure) -> None:
    """Head, hair and hat."""
    vc, ru, rv, d = g.vc, g.ru, g.rv, g.d
    hair_top = vc - rv * (0.2 if ident.hair == "buzz" else 0.42)
    if g.view == "back":
        p.ellipse(SKIN, 0.0, vc, ru, rv)
        nape = vc + rv * (0.35 if ident.hair == "buzz" else 0.75)
        p.ellipse(HAIR, 0.0, vc, ru * 1.06, rv * 1.04, clip=(vc - rv * 1.1, nape))
    else:
        p.ellipse(SKIN, 0.0, vc, ru, rv)
        if g.side:
            p.paint(HAIR, vc - rv * 1.1, vc + rv * 0.7,
                    lambda uu, vv: (((uu / (ru * 1.06)) ** 2 + ((vv - vc) / (rv * 1.04)) ** 2) <= 1)
                    & ((uu * d < -ru * 0.15) | (vv < hair_top)))
        else:
            p.ellipse(HAIR, 0.0, vc, ru * 1.06, rv * 1.04, clip=(vc - rv * 1.1, hair_top))
            if ident.hair == "long":
                p.rect(HAIR, -ru * 1.1, -ru * 0.72, vc - rv * 0.5, vc + rv * 0.7)
                p.rect(HAIR, ru * 0.72, ru * 1.1, vc - rv * 0.5, vc + rv * 0.7)
    if ident.hair == "ponytail":
        if g.view == "back":
            p.band(HAIR, vc, vc + 0.13, 0.0, 0.017, 0.011)
        elif g.side:
            p.ellipse(HAIR, -d * (ru + 0.018), vc + 0.01, 0.022, 0.04)
    if ident.hair == "long" and g.view == "back":
        p.band(HAIR, vc, vc + 0.17, 0.0, ru * 1.12, ru * 1.02)
    if ident.hat:
        p.ellipse(HAT, 0.0, vc - rv * 0.35, ru * 1.12, rv * 0.72, clip=(vc - rv * 1.2, vc - rv * 0.3))
        if g.view == "front":
            p.rect(HAT, -ru * 1.1, ru * 1.1, vc - rv * 0.38, vc - rv * 0.24)
        elif g.side:
            u0, u1 = d * ru * 0.2, d * (ru + 0.04)
            p.rect(HAT, min(u0, u1), max(u0, u1), vc - rv * 0.38, vc - rv * 0.24)


def _paint_over_body(p: _Painter, ident: Identity, g: _Figure) -> None:
    """A backpack seen from behind, the straps, and a shoulder bag on the near side."""
    if ident.bag == "backpack":
        top = g.v_sh + 0.015
        if g.view == "back":
            p.rect(BAG, -ident.bag_w * 0.5 - 0.03, ident.bag_w * 0.5 + 0.03, top, top + ident.bag_h)
            p.rect(STRAP, -ident.bag_w * 0.4, ident.bag_w * 0.4, top + ident.bag_h * 0.55, top + ident.bag_h * 0.62)
        elif g.view == "front":
            for uc in (-g.sw * 0.55, g.sw * 0.55):
                p.band(STRAP, g.v_sh, g.v_sh + 0.17, uc, 0.012)
    if ident.bag in ("left", "right") and (not g.side or g.bag_near):
        bv = g.v_hip - 0.05
        if g.side:
            bu = -g.d * 0.01
        else:
            bu = g.bag_dir * (g.sw + 2 * g.arm + ident.bag_w * 0.3)
        strap_from = -g.bag_dir * g.sw * 0.6 if not g.side else 0.0
        p.band(STRAP, g.v_sh, bv, strap_from, 0.01, tilt=(bu - strap_from) / max(bv - g.v_sh, 1e-3))
        p.rect(BAG, bu - ident.bag_w * 0.5, bu + ident.bag_w * 0.5, bv, bv + ident.bag_h)


def _paint_pattern(p: _Painter, ident: Identity, g: _Figure) -> None:
    """The top's pattern, in garment coordinates so that it follows the body."""
    r0, r1 = p.rows(g.v_sh - 0.02, max(ident.top_end, g.v_wrist) + 0.05)
    if r1 <= r0:
        return
    block = p.labels[r0:r1]
    uu = p.u / g.s
    vv = p.v[r0:r1, None]
    v_sh = g.v_sh
    if ident.pattern == "hstripes":
        sec = ((vv - v_sh) / ident.period + ident.phase) % 1.0 < ident.duty
    elif ident.pattern == "vstripes":
        sec = (uu / ident.period + ident.phase) % 1.0 < ident.duty
    elif ident.pattern == "checks":
        a = ((vv - v_sh) / ident.period + ident.phase) % 1.0 < 0.5
        b = (uu / ident.period + ident.phase) % 1.0 < 0.5
        sec = a ^ b
    elif ident.pattern == "block":
        sec = np.broadcast_to(vv < v_sh + 0.35 * (ident.top_end - v_sh), block.shape)
    elif g.view != "front":  # logo: a chest emblem, seen only from the front
        sec = np.zeros(block.shape, dtype=bool)
    else:
        sec = _logo(ident, uu - ident.logo_offset * ident.shoulder, vv - (v_sh + 0.09))
    block[np.broadcast_to(sec, block.shape) & (block == TOP)] = TOP_B


def _logo(ident: Identity, du_signed: np.ndarray, dv_signed: np.ndarray) -> np.ndarray:
    """The emblem's mask, given the offsets from its centre."""
    du, dv = np.abs(du_signed), np.abs(dv_signed)
    r = ident.logo_size
    if ident.logo_shape == "circle":
        return du * du + dv * dv <= r * r
    if ident.logo_shape == "square":
        return (du <= r * 0.85) & (dv <= r * 0.85)
    if ident.logo_shape == "diamond":
        return du + dv <= r * 1.2
    return (dv_signed >= -r) & (dv_signed <= r) & (du <= (dv_signed + r) * 0.6)
