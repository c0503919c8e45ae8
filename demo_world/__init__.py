"""The demo world: a tiny procedural text-to-image world (objects x styles) to measure erasure on.

Pure-torch modules (dataset, classifiers, metrics) never import ComfyUI; model,
generate and training do. See docs/demo_world/README.md.
"""
