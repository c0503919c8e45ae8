"""Stage 4: judge the trained demo model the way every erasure benchmark will.

Generates the UnlearnCanvas-style generation set (every object x style pair,
two seeds) for each prompt phrasing with the fixed sampler settings, classifies
the images, and reports accuracies per concept and per phrasing, the time to
generate one image, and the size of the shipped weights.
"""
import time

import numpy as np
from PIL import Image

from .. import config
from ..classifiers import classify
from ..dataset import OBJECTS, PROMPT_TEMPLATES, STYLES, prompt, render
from ..generate import generate
from ..metrics import generation_set, per_concept_accuracy, records
from ..model import load_demo_model
from .common import Clock
from . import report

SEEDS = (0, 1)  # the acceptance set: UnlearnCanvas's phrasing, every pair, two seeds
OTHER_PHRASING_SEEDS = (0,)  # the other phrasings are checked on one seed to save CPU time
# With two seeds a concept has 24 images, so one image moves it 4.2 points: the per-concept table also
# gives the first phrasing over six more seeds, a steadier estimate beside the acceptance figure.
STEADY_SEEDS = tuple(range(8))
GRID_CELL = 96


def _accuracy(recs, domain):
    return float(np.mean([getattr(r, "predicted_" + domain) == getattr(r, domain) for r in recs]))


def one_image_seconds(model, clip, vae, repeats=3):
    """Wall time of prompt -> image for one 128x128 image at the evaluation settings (median)."""
    times = []
    for seed in range(repeats + 1):
        start = time.perf_counter()
        generate(model, clip, vae, [prompt("star", "Neon")], [seed])
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))  # the first call also pays one-off set-up


def sample_grid(images, items, path):
    """Objects across, styles down; first seed."""
    cells = {(i.object, i.style): img for i, img in zip(items, images) if i.seed == SEEDS[0]}
    rows = [np.concatenate([cells[(o, s)] for o in OBJECTS], axis=1) for s in STYLES]
    grid = (np.concatenate(rows, axis=0) * 255).round().astype(np.uint8)
    size = (GRID_CELL * len(OBJECTS), GRID_CELL * len(STYLES))
    Image.fromarray(grid).resize(size, Image.LANCZOS).save(path)


def dataset_grid(path, seed=config.SEED + 40, cell=64):
    """The training data in the same layout as the samples: one procedural image per pair."""
    rng = np.random.default_rng(seed)
    rows = [np.concatenate([render(o, s, rng) for o in OBJECTS], axis=1) for s in STYLES]
    size = (cell * len(OBJECTS), cell * len(STYLES))
    Image.fromarray(np.concatenate(rows, axis=0)).resize(size, Image.LANCZOS).save(path)


def summary_markdown(result):
    lines = ["## Demo model, judged by the classifiers", "",
             f"Sampler: {config.SAMPLER}, 128x128, empty negative prompt. Every object x style pair: "
             f"seeds {list(SEEDS)} for the first phrasing, {list(OTHER_PHRASING_SEEDS)} for the others.", "",
             "| phrasing | images | object acc. | style acc. |", "|---|---|---|---|"]
    for t, acc in enumerate(result["per_template"]):
        lines.append(f"| `{PROMPT_TEMPLATES[t]}` | {acc['images']} | {acc['object']:.1%} | {acc['style']:.1%} |")
    steady = f"seeds 0-{STEADY_SEEDS[-1]}"
    lines += ["", f"Per concept, first phrasing (`{PROMPT_TEMPLATES[0]}`): seeds {list(SEEDS)} "
                  f"({result['per_template'][0]['images']} images), and {steady} ({result['steady_images']} images):",
              "", f"| object | seeds {list(SEEDS)} | {steady} | | style | seeds {list(SEEDS)} | {steady} |",
              "|---|---|---|---|---|---|---|"]
    for o, s in zip(OBJECTS, STYLES):
        lines.append(f"| {o} | {result['per_object'][o]:.1%} | {result['steady_per_object'][o]:.1%} | "
                     f"| {s} | {result['per_style'][s]:.1%} | {result['steady_per_style'][s]:.1%} |")
    lines += ["", f"Generating one 128x128 image (prompt encode + 20 steps + decode, batch 1): "
                  f"{result['one_image_seconds']:.2f} s.",
              f"Shipped weights: {result['weights_mb']:.1f} MiB ({', '.join(result['weight_files'])}).", "",
              "![samples](samples.png)", "",
              f"Samples: `{PROMPT_TEMPLATES[0]}`, seed {SEEDS[0]}; objects across, styles down. "
              "The procedural training images in the same layout:", "",
              "![dataset](dataset_grid.png)"]
    return "\n".join(lines)


def run(log):
    clock = Clock()
    model, clip, vae = load_demo_model()
    result = {"per_template": []}
    generated = []
    for t in range(len(PROMPT_TEMPLATES)):
        items = generation_set(SEEDS if t == 0 else OTHER_PHRASING_SEEDS, template=t)
        start = time.perf_counter()
        generated.append((items, generate(model, clip, vae, [i.prompt for i in items], [i.seed for i in items])))
        log(f"phrasing {t}: {len(items)} images in {time.perf_counter() - start:.0f} s")
    for t, (items, images) in enumerate(generated):
        recs = records(items, classify(images))
        result["per_template"].append({"images": len(recs), "object": _accuracy(recs, "object"),
                                       "style": _accuracy(recs, "style")})
        log(f"phrasing {t}: {result['per_template'][-1]}")
        if t == 0:
            acceptance_recs = recs
            sample_grid(images.numpy(), items, report.DOCS / "samples.png")
            result["per_object"] = per_concept_accuracy(recs, "object")
            result["per_style"] = per_concept_accuracy(recs, "style")
            result["object_acc"] = _accuracy(recs, "object")
            result["style_acc"] = _accuracy(recs, "style")
    more = generation_set([s for s in STEADY_SEEDS if s not in SEEDS])
    steady = acceptance_recs + records(more, classify(generate(model, clip, vae, [i.prompt for i in more],
                                                               [i.seed for i in more])))
    result["steady_images"] = len(steady)
    result["steady_per_object"] = per_concept_accuracy(steady, "object")
    result["steady_per_style"] = per_concept_accuracy(steady, "style")
    log(f"seeds {STEADY_SEEDS}: object acc {_accuracy(steady, 'object'):.3f}")
    dataset_grid(report.DOCS / "dataset_grid.png")
    result["one_image_seconds"] = one_image_seconds(model, clip, vae)
    files = sorted(config.WEIGHTS_DIR.glob("*.safetensors"))
    result["weights_mb"] = sum(f.stat().st_size for f in files) / 2 ** 20
    result["weight_files"] = [f"{f.name} {f.stat().st_size / 2 ** 20:.1f} MiB" for f in files]
    result["minutes"] = clock.minutes()
    result["summary"] = summary_markdown(result)
    log(f"object acc {result['object_acc']:.3f} style acc {result['style_acc']:.3f} "
        f"one image {result['one_image_seconds']:.2f} s weights {result['weights_mb']:.1f} MiB")
    return result
