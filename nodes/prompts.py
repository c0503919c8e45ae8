"""Concept lists as users type them: one prompt per line."""
from __future__ import annotations


def prompt_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def target_surrogate_pairs(targets_text: str, surrogates_text: str) -> tuple[list[str], list[str]]:
    """Pair targets with surrogates line by line; a single surrogate line serves every target."""
    targets, surrogates = prompt_lines(targets_text), prompt_lines(surrogates_text)
    if not targets:
        raise ValueError("targets is empty: write the concept(s) to erase, one prompt per line.")
    if not surrogates:
        raise ValueError("surrogates is empty: write what each target should become, one prompt per line "
                         "(or a single line for all targets).")
    if len(surrogates) == 1:
        surrogates = surrogates * len(targets)
    if len(surrogates) != len(targets):
        raise ValueError(f"surrogates has {len(surrogates)} lines but targets has {len(targets)}: give one "
                         "surrogate per target, or a single surrogate for all.")
    for target, surrogate in zip(targets, surrogates):
        if target.lower() == surrogate.lower():
            raise ValueError(f"target '{target}' equals its surrogate: a surrogate must be a different concept.")
    return targets, surrogates


def retain_lines(retain_text: str, targets: list[str]) -> list[str]:
    retain = prompt_lines(retain_text)
    lowered = {t.lower() for t in targets}
    clash = [r for r in retain if r.lower() in lowered]
    if clash:
        raise ValueError(f"retain lists '{clash[0]}', which is also a target: a concept cannot be erased and kept.")
    return retain
