"""Erasure metrics as UnlearnCanvas defines them (Zhang et al., 2024), shared by every benchmark.

The evaluation generates one image per (object, style, seed) -- `generation_set`
-- and lets the object and the style classifier judge each one. A record is
(prompted object, prompted style, classified object, classified style).

Per-concept accuracy acc_D(c): among all images whose prompt names concept c of
domain D (over every concept of the other domain and every seed), the share
that D's classifier assigns to c.

For erasure targets T in domain D (D = "object" or "style"; D' the other one):
  * UA  (unlearning accuracy)      = 1 - mean_{c in T} acc_D(c)
        share of target-prompted images NOT classified as the target;
  * IRA (in-domain retain acc.)    = mean_{c in D \\ T} acc_D(c)
        how well the other concepts of the same domain survive;
  * CRA (cross-domain retain acc.) = mean_{c' in D'} acc_D'(c')
        how well the other domain survives, measured on all images, the
        target-prompted ones included (UnlearnCanvas evaluates every style x
        object image with the other domain's classifier).
Averages over concepts are unweighted (macro), as in UnlearnCanvas; all values
are fractions in [0, 1] (UnlearnCanvas prints them as percentages).
"""
from collections import namedtuple

from . import config
from .dataset import OBJECTS, STYLES, prompt

GenerationItem = namedtuple("GenerationItem", "prompt object style seed")
Record = namedtuple("Record", "object style predicted_object predicted_style")

# Sampler settings of every evaluation (KSampler node: sampler, scheduler, steps, cfg).
SAMPLER = dict(config.SAMPLER)


def generation_set(seeds=(0, 1), template=0, objects=OBJECTS, styles=STYLES):
    """Every object x style pair once per seed, prompted with PROMPT_TEMPLATES[template]."""
    return [GenerationItem(prompt(o, s, template), o, s, seed) for s in styles for o in objects for seed in seeds]


def records(items, judgements):
    """Pair generation items with the classifiers' judgements of their images."""
    return [Record(i.object, i.style, j.object, j.style) for i, j in zip(items, judgements)]


def _other(domain):
    return "style" if domain == "object" else "object"


def concept_accuracy(recs, domain, concept):
    """acc_D(c): share of images prompted with `concept` that D's classifier calls `concept`."""
    hits = [getattr(r, "predicted_" + domain) == concept for r in recs if getattr(r, domain) == concept]
    if not hits:
        raise ValueError(f"no images prompted with {domain} {concept!r}")
    return sum(hits) / len(hits)


def per_concept_accuracy(recs, domain):
    """{concept: acc_D(concept)} for every concept of the domain the records prompt, in order of appearance."""
    concepts = dict.fromkeys(getattr(r, domain) for r in recs)
    return {c: concept_accuracy(recs, domain, c) for c in concepts}


def erasure_metrics(recs, domain, targets):
    """{"UA", "IRA", "CRA"} for erasing `targets` (a concept or a list) of `domain`."""
    targets = [targets] if isinstance(targets, str) else list(targets)
    own = per_concept_accuracy(recs, domain)
    cross = per_concept_accuracy(recs, _other(domain))
    retained = [c for c in own if c not in targets]
    return {
        "UA": 1 - sum(own[t] for t in targets) / len(targets),
        "IRA": sum(own[c] for c in retained) / len(retained),
        "CRA": sum(cross.values()) / len(cross),
    }
