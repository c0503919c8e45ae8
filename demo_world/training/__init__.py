"""Training stages of the demo world; run them with `python -m demo_world.train`."""
