"""The diffusion training loop that both phases share: what it saves, and how its moving average starts."""
import pytest
import torch
from safetensors.torch import load_file

from demo_world import config
from demo_world.dataset import OBJECTS
from demo_world.training import diffusion


@pytest.fixture
def weights_in(tmp_path, monkeypatch):
    """The stages write the shipped weight files; point them at a temporary folder."""
    monkeypatch.setattr(config, "UNET_FILE", tmp_path / "unet.safetensors")
    monkeypatch.setattr(config, "TEXT_ENCODER_FILE", tmp_path / "text_encoder.safetensors")
    return tmp_path


def one_step(ema_warm_up):
    """One training step on four random latents; the UNet's weights before and after, and what was saved.

    The large learning rate makes Adam's first step (about lr per weight) far bigger than fp16 rounding,
    so the two decays below give clearly different saved weights."""
    torch.manual_seed(0)
    unet, clip, tokenizer = diffusion.new_models()
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    data = {"latents": torch.randn(4, config.LATENT_CHANNELS, 16, 16),
            "objects": torch.arange(4), "styles": torch.arange(4)}
    losses = diffusion._fit(unet, clip, tokenizer, data, steps=1, lr=0.05, warmup=1, max_weight=5.0,
                            gen=torch.Generator().manual_seed(0), ema_warm_up=ema_warm_up, log=lambda msg: None,
                            device=torch.device("cpu"))
    after = unet.state_dict()
    saved = {k: v.float() for k, v in load_file(str(config.UNET_FILE)).items()}
    return before, after, saved, losses


@pytest.mark.parametrize("ema_warm_up, decay", [(True, 0.1), (False, diffusion.EMA_DECAY)])
def test_saved_weights_are_the_moving_average(weights_in, ema_warm_up, decay):
    # From scratch the average warms up (decay (1 + step) / (10 + step) = 0.1 at step 0); refining
    # trained weights uses the full decay at once, so the first steps cannot wash them out.
    before, after, saved, losses = one_step(ema_warm_up)
    assert len(losses) == 1 and torch.isfinite(torch.tensor(losses)).all()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved, "one optimizer step changed no weight"
    for k in moved:
        expected = decay * before[k] + (1 - decay) * after[k]
        torch.testing.assert_close(saved[k], expected.half().float(), atol=1e-3, rtol=2e-3)
    assert (weights_in / "text_encoder.safetensors").exists()


def one_step_in(autocast_dtype):
    """One step from the same initial weights and draws; its loss and the dtypes the first convolution computed in."""
    torch.manual_seed(0)
    unet, clip, tokenizer = diffusion.new_models()
    computed = []
    unet.input_blocks[0][0].register_forward_hook(lambda module, args, out: computed.append(out.dtype))
    data = {"latents": torch.randn(4, config.LATENT_CHANNELS, 16, 16),
            "objects": torch.arange(4), "styles": torch.arange(4)}
    losses = diffusion._fit(unet, clip, tokenizer, data, steps=2, lr=1e-3, warmup=1, max_weight=5.0,
                            gen=torch.Generator().manual_seed(0), ema_warm_up=True, log=lambda msg: None,
                            device=torch.device("cpu"), autocast_dtype=autocast_dtype)
    weight_dtypes = {p.dtype for p in list(unet.parameters()) + list(clip.parameters())}
    return losses, computed, weight_dtypes


def test_bf16_autocast_computes_in_bf16_and_trains_fp32_weights(weights_in):
    # `python -m demo_world.train --precision bf16`: cheaper arithmetic, the same weights, optimizer and average.
    fp32_losses, fp32_computed, _ = one_step_in(None)
    losses, computed, weight_dtypes = one_step_in(torch.bfloat16)
    assert fp32_computed == [torch.float32] * 2 and computed == [torch.bfloat16] * 2
    assert weight_dtypes == {torch.float32}
    assert all(v.dtype == torch.float16 for v in load_file(str(config.UNET_FILE)).values())
    # Same draws, so the losses differ only by bf16's rounding (8 bits of mantissa: about 0.4% per operation).
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(fp32_losses), rtol=0.03, atol=0)
    assert losses != fp32_losses


def test_outline_map_covers_where_round_shapes_differ():
    # The outline stage weighs the latent pixels that tell a hexagon from a circle.
    import numpy as np

    from demo_world.dataset import object_mask

    masks = {o: torch.from_numpy(object_mask(o, np.random.default_rng(3))) for o in ("circle", "hexagon")}
    maps = diffusion.outline_map(torch.stack(list(masks.values())))
    assert maps.shape == (2, 1, 16, 16)
    torch.testing.assert_close(maps.mean(dim=(1, 2, 3)), torch.ones(2))
    # Same seed, same place and size: the shapes differ from each other by a few image pixels at the corners.
    differ = torch.nn.functional.avg_pool2d((masks["hexagon"] - masks["circle"]).abs()[None, None], 8)[0, 0] > 0.01
    assert differ.any()
    weights = maps[1, 0][differ]
    assert (weights > 0).float().mean() >= 0.9, "the hexagon's differences from a circle fall outside its outline"
    assert weights.mean() > 3, f"the hexagon's differences from a circle get only {weights.mean():.1f}x the mean weight"
    centre = masks["circle"].nonzero().float().mean(0).div(8).long()
    assert maps[0, 0, centre[0], centre[1]] == 0  # the inside of a shape carries no outline


def test_swap_cycle_draws_the_new_object_most_often():
    objects = torch.arange(len(OBJECTS)).repeat_interleave(3)
    weights = diffusion.swap_draw_weights(objects)
    by_object = dict(zip(OBJECTS, weights.view(len(OBJECTS), 3)[:, 0].tolist()))
    assert by_object[diffusion.SWAPPED_IN] == diffusion.SWAP_EMPHASIS > diffusion.OUTLINE_EMPHASIS
    assert all(by_object[o] == diffusion.OUTLINE_EMPHASIS for o in diffusion.OUTLINE_OBJECTS)
    assert sum(w == 1.0 for w in by_object.values()) == len(OBJECTS) - len(diffusion.OUTLINE_OBJECTS) - 1


def test_outline_cycles_draw_the_round_shapes_more_often_and_hexagon_most_in_the_late_ones():
    objects = torch.arange(len(OBJECTS))
    by_cycle = [dict(zip(OBJECTS, diffusion.outline_draw_weights(objects, cycle).tolist()))
                for cycle in range(diffusion.OUTLINE_CYCLES)]
    early = diffusion.OUTLINE_CYCLES - diffusion.LATE_CYCLES
    assert 0 < early and [by_object["hexagon"] for by_object in by_cycle] == (
        [diffusion.OUTLINE_EMPHASIS] * early + [diffusion.LATE_EMPHASIS["hexagon"]] * diffusion.LATE_CYCLES)
    assert diffusion.LATE_EMPHASIS["hexagon"] > diffusion.OUTLINE_EMPHASIS
    for by_object in by_cycle:
        assert all(by_object[o] == diffusion.OUTLINE_EMPHASIS for o in diffusion.OUTLINE_OBJECTS if o != "hexagon")
        assert sum(w == 1.0 for w in by_object.values()) == len(OBJECTS) - len(diffusion.OUTLINE_OBJECTS)


class Stopped(Exception):
    pass


def test_a_stopped_outline_stage_resumes_at_its_next_cycle_with_the_same_weights(weights_in, tmp_path, monkeypatch):
    """A retrain outlasts a sitting: stopped after the outline stage's first cycle and resumed, it must end where one
    uninterrupted run ends, bit for bit."""
    from demo_world.training import report

    monkeypatch.setattr(diffusion, "OUTLINE_STEPS", 2)
    monkeypatch.setattr(diffusion, "OUTLINE_CYCLES", 3)
    monkeypatch.setattr(diffusion, "LATE_CYCLES", 2)
    monkeypatch.setattr(diffusion, "BATCH", 4)
    # Large enough that two steps move the fp16 weights, so that an equality below could fail.
    monkeypatch.setattr(diffusion, "OUTLINE_LR", 0.05)
    monkeypatch.setattr(diffusion, "EMA_DECAY", 0.5)
    # Hexagon among the objects: the late cycles draw it more often, so a resume that lost track of which cycle
    # it is in would draw differently.
    objects = torch.tensor([OBJECTS.index(o) for o in ("circle", "square", "hexagon", "star")]).repeat(2)
    data = {"latents": torch.randn(8, config.LATENT_CHANNELS, 16, 16, generator=torch.Generator().manual_seed(1)),
            "objects": objects, "styles": torch.arange(8) % 3}
    monkeypatch.setattr(diffusion, "cached_latents", lambda log: data)
    outlines = 0.5 + torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(2))
    monkeypatch.setattr(diffusion, "outline_maps", lambda log: outlines)
    torch.manual_seed(0)
    unet, clip, _ = diffusion.new_models()
    start = {"unet": unet.state_dict(), "clip": clip.state_dict()}
    quiet, cpu = (lambda msg: None), torch.device("cpu")

    def outline_from_start(folder, stop_after=None):
        diffusion.save_fp16(start["unet"], config.UNET_FILE)
        diffusion.save_fp16(start["clip"], config.TEXT_ENCODER_FILE)
        monkeypatch.setattr(report, "DOCS", folder)
        if stop_after:  # stopped the way a killed run stops: inside the next cycle, before it saves
            fit_cycle = diffusion.outline_cycle

            def stopping_cycle(cycle, *args, **kwargs):
                if cycle == stop_after:
                    raise Stopped
                return fit_cycle(cycle, *args, **kwargs)

            monkeypatch.setattr(diffusion, "outline_cycle", stopping_cycle)
            with pytest.raises(Stopped):
                diffusion.outline(quiet, cpu, report.CycleLog("outline", resume=False))
            monkeypatch.setattr(diffusion, "outline_cycle", fit_cycle)
        cycles = report.CycleLog("outline", resume=stop_after is not None)
        result = diffusion.outline(quiet, cpu, cycles)
        return result, cycles, load_file(str(config.UNET_FILE)), load_file(str(config.TEXT_ENCODER_FILE))

    whole, _, whole_unet, whole_clip = outline_from_start(tmp_path / "whole")
    resumed, cycles, resumed_unet, resumed_clip = outline_from_start(tmp_path / "resumed", stop_after=1)
    assert cycles.done() == 3 and len(resumed["losses"]) == len(whole["losses"]) == 6
    assert resumed["losses"] == pytest.approx(whole["losses"], abs=1e-5)  # the log rounds them to 5 decimals
    for k in whole_unet:
        assert torch.equal(resumed_unet[k], whole_unet[k]), k
    for k in whole_clip:
        assert torch.equal(resumed_clip[k], whole_clip[k]), k
    moved = [k for k in whole_unet if not torch.equal(whole_unet[k], start["unet"][k].half())]
    assert moved, "outline changed no weight: the comparison above would prove nothing"
    cycles.close()
    assert not cycles.path.exists()
