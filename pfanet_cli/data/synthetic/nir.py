"""The near-infrared model of the synthetic IR cameras: a material's reflectance at about 850 nm as a function of
its visible colour and its material class, mixed with an independent residual (docs/synthetic.md gives the
physical argument, its sources and the default residual share).

SYSU-MM01's IR cameras are active near-infrared cameras: they see the light of their own 850 nm illuminator
reflected by the scene, not temperature. What a garment reflects there depends on how it was coloured:

* ``dye``: an organic dye on a textile fibre. Dyes absorb in the visible and are largely transparent at 850 nm,
  so the garment reflects about what its undyed fibre reflects (``FIBRE``), whatever its visible colour; a dye
  whose absorption band lies at the red end of the visible (blues, greens, blacks mixed from dyes) keeps some of
  it in the near infrared. The visible red value ``r`` is the renderer's measure of that:
  ``FIBRE * (1 - DYE_TAIL * (1 - r))``.
* ``carbon``: carbon black (pigment prints, dope-dyed synthetic fibres, rubber and leather finishes) absorbs
  across the visible and the near infrared alike, so the garment is as dark at 850 nm as its brightest visible
  channel ``v = max(r, g, b)`` says: ``FIBRE * v``.
* ``skin`` and ``hair``: melanin absorbs less at 850 nm than in the visible, so differences in skin tone shrink
  (``SKIN_BASE + SKIN_SLOPE * r``) and dark hair is less dark (``HAIR_BASE + HAIR_SLOPE * v``).

A garment is ``carbon`` with a probability that grows as its colour darkens (black and charcoal garments are the
ones coloured with carbon black); shoes are ``carbon`` more often (rubber soles, finished leather).

The IR intensity the renderer uses is ``(1 - share) * predicted + share * residual``, where ``residual`` is the
independent draw of versions up to 0.1 (unrelated to colour): ``share`` 0 makes every intensity the documented
function of colour and class, ``share`` 1 reproduces the data of those versions bit for bit.
"""

from __future__ import annotations

import numpy as np

from pfanet_cli.errors import UsageError

DEFAULT_IR_RESIDUAL = 0.3
"""Default share of the independent residual (docs/synthetic.md: what colour and class leave unexplained)."""

MATERIALS = ("none", "skin", "hair", "dye", "carbon")
"""Material classes; an Identity stores the index of each label's class."""
NONE, SKIN, HAIR, DYE, CARBON = range(len(MATERIALS))

FIBRE = 0.8
"""Reflectance at 850 nm of an undyed textile fibre: what a dye transparent there leaves."""
DYE_TAIL = 0.4
"""Share of that reflectance still absorbed by a dye whose band lies at the red end of the visible (r = 0)."""
SKIN_BASE, SKIN_SLOPE = 0.45, 0.2
HAIR_BASE, HAIR_SLOPE = 0.15, 0.6
CARBON_P_LIGHT, CARBON_P_DARK = 0.1, 0.5
"""Probability that a garment is coloured with carbon black: light colours (v >= CARBON_V_LIGHT), dark ones
(v <= CARBON_V_DARK), linear in between."""
CARBON_V_DARK, CARBON_V_LIGHT = 0.1, 0.45
CARBON_P_SHOES = 0.7


def nir_reflectance(rgb: np.ndarray, material: int) -> float:
    """The reflectance at 850 nm of a material of class ``material`` whose visible colour is ``rgb`` (in [0, 1])."""
    r, v = float(rgb[0]), float(np.max(rgb))
    if material == DYE:
        return FIBRE * (1.0 - DYE_TAIL * (1.0 - r))
    if material == CARBON:
        return FIBRE * v
    if material == SKIN:
        return SKIN_BASE + SKIN_SLOPE * r
    if material == HAIR:
        return HAIR_BASE + HAIR_SLOPE * v
    raise ValueError(f"no near-infrared reflectance for material {material!r}")


def carbon_probability(rgb: np.ndarray, shoes: bool = False) -> float:
    """How likely a garment of visible colour ``rgb`` is coloured with carbon black."""
    if shoes:
        return CARBON_P_SHOES
    darkness = np.clip((CARBON_V_LIGHT - float(np.max(rgb))) / (CARBON_V_LIGHT - CARBON_V_DARK), 0.0, 1.0)
    return CARBON_P_LIGHT + (CARBON_P_DARK - CARBON_P_LIGHT) * float(darkness)


def draw_garment_material(rng: np.random.Generator, rgb: np.ndarray, shoes: bool = False) -> int:
    return CARBON if rng.random() < carbon_probability(rgb, shoes) else DYE


def mix_residual(predicted: float, residual: float, share: float) -> float:
    """``(1 - share) * predicted + share * residual``: exactly ``residual`` at share 1."""
    return (1.0 - share) * predicted + share * residual


def check_ir_residual(share: object) -> float:
    """The residual share as a float in [0, 1], or a UsageError naming the option."""
    if isinstance(share, bool) or not isinstance(share, (int, float, np.integer, np.floating)):
        raise UsageError(f"--ir-residual must be a number in [0, 1], got {share!r}")
    value = float(share)
    if not 0.0 <= value <= 1.0:
        raise UsageError(f"--ir-residual must be in [0, 1] (0: IR intensity fully predictable from colour and "
                         f"material, 1: unrelated to colour), got {share!r}")
    return value
