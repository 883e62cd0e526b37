"""The classes of the synthetic families: each family's colour hues and tone pitches.

Shared by the generators (:mod:`mmldm.synthetic.ball`, :mod:`mmldm.synthetic.pulse`), the
detectors (:mod:`mmldm.synthetic.detect`) and the scores (:mod:`mmldm.synthetic.scores`).
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the clips read a data config's fields
    from mmldm.config import DataConfig


@dataclass(frozen=True)
class ClassSet:
    """A family's classes: colour hues and tone pitches (class k: ``base * ratio**k``)."""

    palette: tuple[tuple[str, float], ...]  # (name, hue in degrees)
    base_pitch_hz: float
    pitch_ratio: float
    pitch_bend: float  # octaves the tone moves up / down around its base pitch


# The orders put the most distinct hues first, so any prefix of K classes is well separated;
# names never change with K.
CLASS_SETS = {
    "ball": ClassSet(
        palette=(
            ("red", 0.0),
            ("green", 120.0),
            ("blue", 240.0),
            ("yellow", 60.0),
            ("magenta", 300.0),
            ("cyan", 180.0),
            ("orange", 30.0),
            ("violet", 270.0),
            ("azure", 210.0),
            ("chartreuse", 90.0),
        ),
        base_pitch_hz=250.0,
        pitch_ratio=1.45,  # 0.536 octave between consecutive classes
        pitch_bend=0.15,  # ranges stay disjoint
    ),
    "pulse": ClassSet(
        palette=(
            ("orange", 30.0),
            ("azure", 210.0),
            ("chartreuse", 90.0),
            ("rose", 330.0),
            ("spring", 150.0),
            ("violet", 270.0),
        ),
        base_pitch_hz=280.0,
        pitch_ratio=1.5,
        pitch_bend=0.0,  # a steady pitch
    ),
}
# Every family has a class set, so its names are the families' (ball first: the default).
FAMILIES = tuple(CLASS_SETS)


def check_family(family: str) -> ClassSet:
    if family not in CLASS_SETS:
        raise ValueError(f"unknown synthetic family {family!r}; families: {', '.join(FAMILIES)}")
    return CLASS_SETS[family]


def max_classes(family: str = "ball") -> int:
    return len(check_family(family).palette)


def class_table(num_classes: int, family: str = "ball") -> list[dict[str, Any]]:
    """The classes' names, colours and pitches, shared by the generator and the detectors.

    Returns one dict per class, index k: ``name`` ("00_red", sortable), ``colour`` (name),
    ``rgb`` ([3] ints in 0..255, saturated: HSV value and saturation 1), ``hue`` (degrees),
    ``base_pitch_hz`` (ball: 250 * 1.45**k) and ``pitch_range_hz`` ([low, high] of the tone).
    """
    classes = check_family(family)
    if not 1 <= num_classes <= len(classes.palette):
        raise ValueError(
            f"the synthetic {family} family supports 1..{len(classes.palette)} classes, "
            f"got num_classes={num_classes}"
        )
    table = []
    for k, (colour, hue) in enumerate(classes.palette[:num_classes]):
        rgb = [int(round(255 * c)) for c in colorsys.hsv_to_rgb(hue / 360.0, 1.0, 1.0)]
        base = classes.base_pitch_hz * classes.pitch_ratio**k
        bend = 2.0**classes.pitch_bend
        table.append(
            {
                "index": k,
                "name": f"{k:02d}_{colour}",
                "colour": colour,
                "rgb": rgb,
                "hue": hue,
                "base_pitch_hz": base,
                "pitch_range_hz": [base / bend, base * bend],
            }
        )
    return table


def check_pitches(data: DataConfig, family: str = "ball") -> None:
    """Raise ValueError if a class's tone would reach 8 kHz, data.fmax or 0.45 x the rate.

    With 16 kHz audio this allows up to 9 ball classes; 10 need a sample rate of 17.5 kHz or
    more.
    """
    limit = min(8000.0, float(data.fmax), 0.45 * data.sample_rate)
    for entry in class_table(data.num_classes, family):
        top = entry["pitch_range_hz"][1]
        if top > limit:
            raise ValueError(
                f"class {entry['name']} needs tones up to {top:.0f} Hz, above {limit:.0f} Hz "
                f"(min of 8 kHz, data.fmax={data.fmax} and 0.45 x data.sample_rate="
                f"{data.sample_rate}); use fewer classes or a higher sample rate"
            )
