"""The shipped classifiers on fresh procedural images."""
import numpy as np
import torch

from demo_world.classifiers import classify
from demo_world.dataset import OBJECTS, STYLES, make_grid_set
from demo_world.training.report import CLASSIFIER_MIN


def test_accuracy_on_held_out_images():
    images, objects, styles = make_grid_set(1, seed=12345)  # a seed no training stage uses
    judged = classify(images)
    object_acc = np.mean([j.object == OBJECTS[o] for j, o in zip(judged, objects)])
    style_acc = np.mean([j.style == STYLES[s] for j, s in zip(judged, styles)])
    assert object_acc >= CLASSIFIER_MIN and style_acc >= CLASSIFIER_MIN, (object_acc, style_acc)


def test_accepts_comfy_images():
    images, objects, styles = make_grid_set(1, seed=99)
    as_uint8 = classify(images[:6])
    as_float = classify(torch.from_numpy(images[:6]).float() / 255.0)  # ComfyUI IMAGE: [N,H,W,3] in 0..1
    assert [(j.object, j.style) for j in as_uint8] == [(j.object, j.style) for j in as_float]
    assert all(0.0 < j.object_conf <= 1.0 and 0.0 < j.style_conf <= 1.0 for j in as_uint8)
