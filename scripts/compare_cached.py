"""A delta-cache schedule on a diffusers pipeline folder: one prompt without and with the cache, same seed.

For a schedule made with `scripts/profile_model.py --family diffusers` (or any schedule that fits the model):
prints the measured speedup of the denoising loop next to the ideal one (block evaluations counted by the
cache), PSNR/SSIM of the cached video against the uncached one, and writes both videos:

    python scripts/compare_cached.py --ckpt_dir ./CogVideoX-5b --cache_schedule profiles/cogvideox5b/schedule.json \
        --size 720*480 --frame_num 49 --sample_guide_scale 6 --prompt "a corgi runs along a beach" --out compare

The denoising loop is timed from the transformer's first call to the end of its last one (text encoding
and decoding are the same in both runs and left out); an untimed two-step run first warms the device up.
A Wan 2.2 folder (two experts) takes a schedule for each: `--cache_schedule` for `transformer` (the high-noise
steps) and `--cache_schedule_2` for `transformer_2` (the low-noise steps), as profile_model.py writes them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from delta_cache.cli import (  # noqa: E402
    OneLineArgumentParser, bounded_float, check_output_path, check_seed, nonempty_str, positive_int, run_cli,
    set_offline)
from delta_cache.errors import UserInputError  # noqa: E402

# Frames per second the released models are shown at (the mp4s only; nothing is computed from it).
FPS = {"CogVideoXTransformer3DModel": 8, "LTXVideoTransformer3DModel": 24, "MochiTransformer3DModel": 30,
       "WanTransformer3DModel": 16, "HunyuanVideoTransformer3DModel": 24, "SkyReelsV2Transformer3DModel": 24,
       "HunyuanVideo15Transformer3DModel": 24}


def build_parser() -> OneLineArgumentParser:
    p = OneLineArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ckpt_dir", required=True, help="a diffusers pipeline folder (model_index.json)")
    p.add_argument("--cache_schedule", type=nonempty_str, required=True, help="a schedule JSON file or preset name")
    p.add_argument("--cache_schedule_2", type=nonempty_str, default=None,
                   help="for a pipeline with two transformers (Wan 2.2): the schedule of transformer_2")
    p.add_argument("--prompt", type=nonempty_str, required=True)
    p.add_argument("--negative_prompt", default=None, help="default: the pipeline's")
    p.add_argument("--size", default=None, help="WIDTH*HEIGHT (default: the pipeline's)")
    p.add_argument("--frame_num", type=positive_int, default=None, help="frames (default: the pipeline's)")
    p.add_argument("--sample_steps", type=positive_int, default=None,
                   help="denoising steps (default: the schedule's step count)")
    p.add_argument("--sample_guide_scale", type=bounded_float(0), default=None,
                   help="the pipeline's guidance_scale (default: the pipeline's)")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float16", "float32"],
                   help="default: bfloat16 on a GPU, float32 on the CPU")
    p.add_argument("--threads", type=positive_int, default=None, help="CPU threads (torch.set_num_threads)")
    p.add_argument("--out", type=Path, default=Path("compare_output"), help="folder for uncached.mp4 and cached.mp4")
    return p


def check_fit(schedule, declared, component: str = "transformer") -> None:
    """Before any weights load: the schedule fits the block lists and depths the folder's `component` declares."""
    from delta_cache.models.video_families import FAMILIES

    transformer = declared.transformers[component]
    unknown = sorted(set(schedule.block_lists) - set(FAMILIES[transformer].block_lists))
    if unknown:
        raise UserInputError(f"schedule '{schedule.name}' names block list '{unknown[0]}', which {transformer} does "
                             f"not have (it has: {', '.join(FAMILIES[transformer].block_lists)})")
    depths = declared.depths(component)
    if depths:  # (else checked when the cache is applied)
        schedule.check_fits(depths)


def load_schedules(args, declared) -> dict:
    """Component name -> its schedule: --cache_schedule for the transformer and, for a pipeline with two
    (Wan 2.2's experts), --cache_schedule_2 for transformer_2; each checked against the folder's config."""
    import delta_cache

    components = list(declared.transformers)
    if len(components) == 2 and args.cache_schedule_2 is None:
        raise UserInputError("this pipeline has two transformers (Wan 2.2's experts): give --cache_schedule_2 for "
                             "transformer_2 too (profile_model.py writes one schedule each)")
    if len(components) == 1 and args.cache_schedule_2 is not None:
        raise UserInputError("--cache_schedule_2 is for a pipeline with two transformers (Wan 2.2); this one has one")
    schedules = {}
    for component, given in zip(components, (args.cache_schedule, args.cache_schedule_2)):
        schedules[component] = delta_cache.load_schedule(given)
        check_fit(schedules[component], declared, component)
        made_for = schedules[component].provenance.get("transformer")
        if len(components) == 2 and made_for in components and made_for != component:
            raise UserInputError(f"{given} was profiled for {made_for} (its provenance says so), but is given for "
                                 f"{component}: swap --cache_schedule and --cache_schedule_2")
    step_counts = {schedule.num_steps for schedule in schedules.values()}
    if len(step_counts) > 1 and args.sample_steps is None:
        counts = " and ".join(map(str, sorted(step_counts)))
        raise UserInputError(f"the two schedules are made for different step counts ({counts}): give --sample_steps")
    return schedules


class LoopTimer:
    """Seconds from the first transformer call to the end of the last one in one pipeline call (the denoising
    loop; read with forward hooks, so pipelines without step callbacks are timed alike, and Wan 2.2's two experts).
    On a GPU with CUDA events, so the timing itself never makes the host wait; the first call's video size is
    checked against the transformer's patch first (one line, not a shape error)."""

    def __init__(self, transformers, device):
        import torch

        self.cuda = device.type == "cuda"
        self.started = False
        self.start = self.end = None  # (perf_counter times on the CPU)
        if self.cuda:
            self._start_event, self._end_event = (torch.cuda.Event(enable_timing=True) for _ in range(2))
        self._hooks = [hook for transformer in transformers for hook in (
            transformer.register_forward_pre_hook(self._call_starts, with_kwargs=True),
            transformer.register_forward_hook(self._call_ends))]

    def _call_starts(self, module, args, kwargs):
        if not self.started:
            from delta_cache.models.video_families import video_family

            video_family(module).layout(module, args, kwargs)
            self.started = True
            if self.cuda:
                self._start_event.record()
            else:
                self.start = time.perf_counter()

    def _call_ends(self, module, args, output):
        if self.cuda:
            self._end_event.record()  # (re-recorded at each call: it ends up at the last one)
        else:
            self.end = time.perf_counter()

    def remove(self) -> None:
        for hook in self._hooks:
            hook.remove()

    def seconds(self) -> float:
        if self.cuda:
            self._end_event.synchronize()
            return self._start_event.elapsed_time(self._end_event) / 1000
        return self.end - self.start


def plan_line(pipe, schedules: dict, num_steps: int) -> str:
    """What the schedules will do in a run of `num_steps` steps, before it runs (for Wan 2.2's experts, each on
    the steps it runs, read off the pipeline's scheduler and boundary)."""
    import delta_cache
    from delta_cache.models.experts import expert_steps
    from delta_cache.plan import block_evals_on_steps

    depths = {name: delta_cache.model_block_lists(getattr(pipe, name)) for name in schedules}
    steps = expert_steps(pipe, num_steps) if len(schedules) > 1 else None
    if steps is None:
        steps = {name: range(num_steps) for name in schedules}
    counts = {name: block_evals_on_steps(schedule, depths[name], num_steps, steps[name])
              for name, schedule in schedules.items() if len(steps[name])}
    planned, total = (sum(count[i] for count in counts.values()) for i in (0, 1))
    parts = ""
    if len(schedules) > 1:
        parts = " (" + ", ".join(f"{name} on steps {steps[name].start}-{steps[name].stop - 1}: {c}/{t}"
                                 for name, (c, t) in counts.items()) + ")"
    return (f"cache plan for {num_steps} steps: {planned}/{total} block evaluations per branch{parts}, ideal "
            f"{total / planned:.2f}x" + ("; these schedules reuse no block at this step count" if planned == total
                                         else ""))


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    from delta_cache.models.pipeline_folder import check_pipeline_folder, check_size_flag

    declared = check_pipeline_folder(args.ckpt_dir)
    check_seed("--seed", args.seed)
    check_size_flag(args.size)
    check_output_path("--out", args.out, folder=True)
    set_offline()

    import torch

    import delta_cache
    from delta_cache.metrics import fidelity
    from delta_cache.models.common import pipeline_input_error
    from delta_cache.models.pipeline_folder import load_folder_pipeline
    from delta_cache.video import save_video

    schedules = load_schedules(args, declared)
    args.sample_steps = args.sample_steps or schedules["transformer"].num_steps
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    pipe, call = load_folder_pipeline(args)
    execution_device = getattr(pipe, "_execution_device", None) or pipe.transformer.device

    def generate(**overrides):
        timer = LoopTimer([getattr(pipe, component) for component in schedules], execution_device)
        try:
            frames = pipe(prompt=args.prompt, generator=torch.Generator(execution_device).manual_seed(args.seed),
                          **{"output_type": "np", **call, **overrides}).frames[0]
        except UserInputError:
            raise
        except (ValueError, TypeError) as err:  # (the pipeline's checks of its inputs, an argument it does not take)
            refusal = pipeline_input_error(pipe, err)
            if refusal is None:
                raise
            raise refusal from None
        finally:
            timer.remove()
        return frames, timer.seconds()

    print(plan_line(pipe, schedules, args.sample_steps), flush=True)
    print("warm-up (2 steps, untimed) ...", flush=True)
    generate(num_inference_steps=2, output_type="latent")
    print("uncached ...", flush=True)
    reference, uncached_seconds = generate()
    handles = [delta_cache.apply_delta_cache(getattr(pipe, component), schedule, num_inference_steps=args.sample_steps)
               for component, schedule in schedules.items()]
    print(f"cached ({', '.join(schedule.name for schedule in schedules.values())}) ...", flush=True)
    video, cached_seconds = generate()
    computed, total = (sum(handle.stats()[key] for handle in handles)
                       for key in ("computed_block_evals", "total_block_evals"))
    for component in schedules:
        delta_cache.remove_delta_cache(getattr(pipe, component))

    args.out.mkdir(parents=True, exist_ok=True)
    fps = FPS.get(type(pipe.transformer).__name__, 16)
    paths = [save_video(reference, args.out / "uncached.mp4", fps), save_video(video, args.out / "cached.mp4", fps)]
    print(f"denoising: uncached {uncached_seconds:.2f} s, cached {cached_seconds:.2f} s: measured speedup "
          f"{uncached_seconds / cached_seconds:.2f}x, ideal {total / computed:.2f}x "
          f"({computed}/{total} block evaluations)")
    print(f"cached vs uncached: {fidelity(video, reference)}; videos: {', '.join(str(p) for p in paths)}")


if __name__ == "__main__":
    run_cli(main)
