"""The erasure the README's demo performs, and the erasure tests check: the Neon style, overwritten
with Watercolor, every other style and every object kept."""
from .dataset import OBJECTS, STYLES, prompt

TARGET_STYLE = "Neon"
SURROGATE_STYLE = "Watercolor"


def target_prompts() -> list[str]:
    return [prompt(o, TARGET_STYLE, 0) for o in OBJECTS]


def surrogate_prompts() -> list[str]:
    return [prompt(o, SURROGATE_STYLE, 0) for o in OBJECTS]


def retain_prompts() -> list[str]:
    """Each other style once, on rotating objects, so every style and every object is anchored."""
    others = [s for s in STYLES if s != TARGET_STYLE]
    return [prompt(OBJECTS[i % len(OBJECTS)], s, 0) for i, s in enumerate(others)]


COMPARE_KEPT = (("star", "Polka Dots"), ("heart", "Sunset"), ("moon", "Blueprint"), ("arrow", "Checkerboard"),
                ("ring", "Wood Grain"), ("hexagon", "Pencil Sketch"))


def compare_prompts() -> list[str]:
    """What the before/after grid shows: the target on six objects, then six kept styles."""
    return [prompt(o, TARGET_STYLE, 0) for o, _ in COMPARE_KEPT] + [prompt(o, s, 0) for o, s in COMPARE_KEPT]
