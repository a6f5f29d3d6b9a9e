"""Referring expressions for synthetic scenes: pick a target that attributes make unique, then phrase it.

Attributes are measured on the rendered image, not taken from the sampling parameters, so a query is true
of what the picture shows. Every attribute a query uses singles the target out on its own:
- size: footprint area at least SIZE_RATIO times every other's (larger) or at most 1/SIZE_RATIO (smaller);
- tone (dermoscopy, ultrasound): mean luminance over the footprint at least TONE_MARGIN below every
  other's (darker) or above (lighter / brighter);
- position: box centre at least POSITION_MARGIN x side left of / right of / above / below every other's.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from medloc_lightning.data.synth.draw import FOOTPRINT_THRESHOLD, footprint_box, luminance

SIZE_RATIO = 1.5
TONE_MARGIN = 0.08
POSITION_MARGIN = 0.12


@dataclass(frozen=True)
class Measured:
    """What the picture shows of one structure: its box (x2/y2 exclusive), footprint area and mean luma."""

    box: list[float]
    area: int
    tone: float

    @property
    def centre(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return (x1 + x2) / 2, (y1 + y2) / 2


def measure(image: np.ndarray, alphas: list[np.ndarray]) -> list[Measured]:
    """Box, area and mean luminance of each structure's footprint on the final image."""
    luma = luminance(image)
    out = []
    for alpha in alphas:
        box, area = footprint_box(alpha)
        out.append(Measured(box, area, float(luma[alpha >= FOOTPRINT_THRESHOLD].mean())))
    return out


def descriptors(structs: list[Measured], i: int, size: int, use_tone: bool) -> dict[str, str]:
    """Attributes that single out structure ``i``: keys among size/tone/h/v, values like 'smaller', 'left'."""
    t, others = structs[i], [s for j, s in enumerate(structs) if j != i]
    if not others:
        return {}
    found: dict[str, str] = {}
    if t.area >= SIZE_RATIO * max(o.area for o in others):
        found["size"] = "larger"
    elif t.area * SIZE_RATIO <= min(o.area for o in others):
        found["size"] = "smaller"
    if use_tone:
        if t.tone <= min(o.tone for o in others) - TONE_MARGIN:
            found["tone"] = "darker"
        elif t.tone >= max(o.tone for o in others) + TONE_MARGIN:
            found["tone"] = "lighter"
    margin = POSITION_MARGIN * size
    (tx, ty), centres = t.centre, [o.centre for o in others]
    if tx <= min(x for x, _ in centres) - margin:
        found["h"] = "left"
    elif tx >= max(x for x, _ in centres) + margin:
        found["h"] = "right"
    if ty <= min(y for _, y in centres) - margin:
        found["v"] = "top"
    elif ty >= max(y for _, y in centres) + margin:
        found["v"] = "bottom"
    return found


def choose_referent(
    structs: list[Measured], size: int, use_tone: bool, rng: np.random.Generator
) -> tuple[int, dict[str, str]] | None:
    """A uniformly drawn structure that some attribute singles out, with its attributes; None if none is."""
    if len(structs) == 1:
        return 0, {}
    options = [(i, d) for i in range(len(structs)) if (d := descriptors(structs, i, size, use_tone))]
    if not options:
        return None
    return options[int(rng.integers(len(options)))]


_SIZE = {"larger": (["larger", "bigger"], ["largest", "biggest"]), "smaller": (["smaller"], ["smallest"])}
_TONE = {
    "dermoscopy": {
        "darker": (["darker", "more pigmented"], ["darkest", "most pigmented"]),
        "lighter": (["lighter", "paler"], ["lightest", "palest"]),
    },
    "ultrasound": {
        "darker": (["darker", "more hypoechoic"], ["darkest", "most hypoechoic"]),
        "lighter": (["brighter", "less hypoechoic"], ["brightest", "least hypoechoic"]),
    },
}
_H = {"left": ["on the left", "on the left side"], "right": ["on the right", "on the right side"]}
_V = {
    "top": ["near the top", "at the top", "in the upper part"],
    "bottom": ["near the bottom", "at the bottom", "in the lower part"],
}
_V_ULTRASOUND = {"top": ["near the top", "closer to the probe"], "bottom": ["near the bottom", "deeper in the image"]}
_CORNER = {"top": ["in the upper", "at the top"], "bottom": ["in the lower", "at the bottom"]}
_NOUNS = {
    "dermoscopy": (["pigmented lesion", "skin lesion", "lesion", "mole"], ["lesion", "pigmented lesion", "mole"]),
    "ultrasound": (["nodule", "hypoechoic nodule", "hypoechoic lesion"], ["nodule"]),
    "xray": (["spot", "focus"], ["spot", "focus"]),
}
_POLARITY = {1: ["dense", "sclerotic"], -1: ["lucent", "lytic"]}


def phrase(
    modality: str, attrs: dict[str, str], n_structures: int, polarity: int, rng: np.random.Generator
) -> str:
    """A noun phrase naming the target by a random non-empty subset of ``attrs`` (plain when attrs is empty)."""

    def pick(options: list[str]) -> str:
        return options[int(rng.integers(len(options)))]

    keys = list(attrs)
    if keys:
        k = min(len(keys), 1 + int(rng.choice(3, p=[0.5, 0.35, 0.15])))
        keys = [keys[j] for j in sorted(rng.choice(len(keys), size=k, replace=False).tolist())]
    superlative = 1 if n_structures >= 3 else 0
    adjectives = []
    if "size" in keys:
        adjectives.append(pick(_SIZE[attrs["size"]][superlative]))
    if "tone" in keys:
        adjectives.append(pick(_TONE[modality][attrs["tone"]][superlative]))
    words = [", ".join(adjectives)] if adjectives else []
    if modality == "xray":
        words.append(pick(_POLARITY[polarity]))
    nouns = _NOUNS[modality][0 if n_structures == 1 else 1]
    if "tone" in keys:  # "the darker pigmented lesion" would stack two tone words
        nouns = [w for w in nouns if " " not in w]
    words.append(pick(nouns))
    if "h" in keys and "v" in keys:
        words.append(f"{pick(_CORNER[attrs['v']])} {attrs['h']}")
    elif "h" in keys:
        words.append(pick(_H[attrs["h"]]))
    elif "v" in keys:
        words.append(pick((_V_ULTRASOUND if modality == "ultrasound" else _V)[attrs["v"]]))
    return "the " + " ".join(words)
