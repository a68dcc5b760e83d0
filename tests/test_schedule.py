import dataclasses
import json

import pytest

import delta_cache as dc
from delta_cache.schedule import compress_ranges, expand_ranges


def _schedule(**block_list):
    spec = {"background_blocks": [1, 2], "refresh_steps": [0, 1, 5]}
    spec.update(block_list)
    return {"format_version": 1, "name": "t", "num_steps": 10, "block_lists": {"blocks": spec}}


def test_presets_match_the_paper_counts():
    wan = dc.load_schedule("wan2.1-t2v-14b")
    assert wan.block_lists["blocks"].runs() == [(0, 0), (2, 7), (10, 20), (25, 32), (37, 38)]
    assert wan.predicted_block_evals({"blocks": 40}, 50) == (992, 2000)
    hv = dc.load_schedule("hunyuanvideo-720p")
    assert hv.block_lists["transformer_blocks"].runs() == [(6, 19)]
    assert hv.predicted_block_evals({"transformer_blocks": 20, "single_transformer_blocks": 40}, 50) == (1632, 3000)
    small = dc.load_schedule("wan2.1-t2v-1.3b")
    assert small.block_lists["blocks"].num_blocks == 30
    assert max(small.block_lists["blocks"].background_blocks) < 30


def test_preset_names_are_case_insensitive_and_unknown_names_list_presets(tmp_path, monkeypatch):
    assert dc.load_schedule("WAN2.1-T2V-14B").name == "wan2.1-t2v-14b"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "wan2.1-t2v-14b").mkdir()  # a folder of that name is not a schedule file
    assert dc.load_schedule("wan2.1-t2v-14b").name == "wan2.1-t2v-14b"
    with pytest.raises(dc.ScheduleError, match="unknown schedule preset 'nope'.*wan2.1-t2v-14b"):
        dc.load_schedule("nope")
    (tmp_path / "profile").mkdir()  # (scripts/profile_model.py's --out, given instead of its schedule.json)
    with pytest.raises(dc.ScheduleError, match="'profile' is a folder, not a schedule file or a preset"):
        dc.load_schedule("profile")
    with pytest.raises(dc.ScheduleError, match="schedule profile is a folder; give a schedule .json file"):
        dc.load_schedule("profile/")


def test_ranges_expand_and_compress():
    assert expand_ranges([0, "2-4", 9], "x") == [0, 2, 3, 4, 9]
    assert compress_ranges([0, 2, 3, 4, 9, 10]) == [0, "2-4", 9, 10]


@pytest.mark.parametrize(
    "change, message",
    [
        ({"background_blocks": [1, 1]}, "listed more than once"),
        ({"background_blocks": ["1-3", 2]}, "listed more than once"),
        ({"refresh_steps": [1, 2]}, "step 0 must be a refresh step"),
        ({"refresh_steps": [0, 10]}, "beyond the schedule's 10 steps"),
        ({"background_blocks": [-1]}, "neither an integer|negative"),
        ({"background_blocks": ["3-1"]}, "is empty"),
        ({"background_blocks": [1.5]}, "neither an integer"),
        ({"background_blocks": ["0-\u00b2"]}, "neither an integer"),  # "0-²": str.isdigit() takes "²", int() not
        ({"background_blocks": ["\u0660-\u0663"]}, "neither an integer"),  # Arabic-Indic digits
        ({"background_blocks": [5], "num_blocks": 4}, "beyond num_blocks=4"),
        ({"cached": [1]}, "unknown key"),
        # checked before a range is expanded (these hung, or ran out of memory)
        ({"refresh_steps": ["0-99999999999"]}, "step 99999999999 is beyond the schedule's 10 steps"),
        ({"background_blocks": ["0-99999999999"]}, "block 99999999999 is beyond any model's depth"),
        ({"background_blocks": ["0-99999"] * 300}, "listed more than once"),  # (took 1 GB before the check)
    ],
)
def test_bad_block_lists_are_rejected(tmp_path, change, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_schedule(**change)))
    with pytest.raises(dc.ScheduleError, match=message):
        dc.load_schedule(path)


def test_huge_step_counts_and_repeated_keys_are_rejected(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**_schedule(), "num_steps": 10**12}))
    with pytest.raises(dc.ScheduleError, match="num_steps must be an integer from 1 to 100000, got 1000000000000"):
        dc.load_schedule(path)
    text = json.dumps(_schedule())
    path.write_text(text.replace('"refresh_steps"', '"refresh_steps": [0], "refresh_steps"', 1))
    with pytest.raises(dc.ScheduleError, match="bad.json: key 'refresh_steps' appears twice in one object"):
        dc.load_schedule(path)


def test_bad_files_are_rejected(tmp_path):
    path = tmp_path / "s.json"
    path.write_text("{not json")
    with pytest.raises(dc.ScheduleError, match="not valid JSON"):
        dc.load_schedule(path)
    path.write_text(json.dumps({**_schedule(), "speed": 2}))
    with pytest.raises(dc.ScheduleError, match="unknown key"):
        dc.load_schedule(path)
    path.write_text(json.dumps({**_schedule(), "forecast": "quadratic"}))
    with pytest.raises(dc.ScheduleError, match="forecast must be one of hold, linear, got 'quadratic'"):
        dc.load_schedule(path)
    for version in (7, True, 1.0, "1"):  # (True and 1.0 equal 1 in Python)
        path.write_text(json.dumps({**_schedule(), "format_version": version}))
        with pytest.raises(dc.ScheduleError, match="format_version"):
            dc.load_schedule(path)
    with pytest.raises(dc.ScheduleError, match="not found"):
        dc.load_schedule(tmp_path / "missing.json")


def test_schedule_round_trips_through_json(tmp_path):
    schedule = dc.load_schedule("hunyuanvideo-720p")
    schedule.save(tmp_path / "copy.json")
    again = dc.load_schedule(tmp_path / "copy.json")
    assert again.block_lists == schedule.block_lists and again.num_steps == 50
    assert again.forecast == "hold" and "forecast" not in json.loads((tmp_path / "copy.json").read_text())
    linear = dataclasses.replace(schedule, forecast="linear")
    linear.save(tmp_path / "linear.json")
    assert dc.load_schedule(tmp_path / "linear.json").forecast == "linear"


def test_check_fits_names_the_problem():
    schedule = dc.load_schedule("wan2.1-t2v-14b")
    with pytest.raises(dc.ScheduleError, match="made for 40 blocks.*has 30"):
        schedule.check_fits({"blocks": 30})
    with pytest.raises(dc.ScheduleError, match="does not have"):
        schedule.check_fits({"transformer_blocks": 40})
    free_depth = dc.Schedule.from_dict({**_schedule(background_blocks=[7])})
    with pytest.raises(dc.ScheduleError, match="block 7 .* beyond the model's depth"):
        free_depth.check_fits({"blocks": 4})


def test_step_rescaling_rule():
    bl = dc.load_schedule("wan2.1-t2v-14b").block_lists["blocks"]
    assert bl.refresh_steps_for(50, 50) == frozenset(bl.refresh_steps)
    # Fewer steps: every schedule refresh falls in some run step's interval, none is lost.
    for n in (10, 25, 30):
        steps = bl.refresh_steps_for(n, 50)
        covered = {k for i in steps for k in range(50) if i * 50 <= k * n < (i + 1) * 50}
        assert set(bl.refresh_steps) <= covered
    # More steps: the warm-up keeps its share (7 of 50 -> 14 of 100), later refreshes map one-to-one.
    steps = sorted(bl.refresh_steps_for(100, 50))
    assert steps[:14] == list(range(14)) and steps[14:] == [24, 36, 48, 60, 72, 84, 96]
    # A final stretch of refresh steps keeps its share too: the high-noise expert of Wan 2.2 computes every step
    # after its own (0-5 of 12), also in a longer run, where one-to-one mapping would leave gaps (reuse) there.
    expert = dc.BlockListSchedule((0, 1, 2), (0, 1, 3, *range(5, 12)), 3)
    assert sorted(expert.refresh_steps_for(20, 12)) == [0, 1, 2, 3, 5, *range(8, 20)]
    assert sorted(expert.refresh_steps_for(6, 12)) == [0, 1, *range(2, 6)]
    final = dc.BlockListSchedule((1,), (0, 10, 20, 30, 47, 48, 49), 3)  # (docs/schedule-format.md's example)
    assert sorted(final.refresh_steps_for(100, 50)) == [0, 1, 20, 40, 60, *range(94, 100)]


def _committed_block_counts(ckpt) -> tuple[dict[str, int], str]:
    """Block list -> blocks of a committed tiny checkpoint, read from its own files, and its transformer file."""
    from delta_cache.models.hunyuan_video.checkpoint import DIT_WEIGHT
    from delta_cache.models.wan.keys import TRANSFORMER_FILE

    config = ckpt / "config.json"
    if config.exists():  # Wan2.1 layout
        return {"blocks": json.loads(config.read_text())["num_layers"]}, TRANSFORMER_FILE
    recipe = json.loads((ckpt / "tiny_model.json").read_text())["recipe"]  # HunyuanVideo upstream layout
    return ({"transformer_blocks": recipe["num_layers"], "single_transformer_blocks": recipe["num_single_layers"]},
            DIT_WEIGHT)


@pytest.mark.parametrize("preset", ["tiny-wan2.1-t2v-profiled", "tiny-hunyuanvideo-t2v-profiled"])
def test_the_profiled_tiny_presets_belong_to_the_committed_models(preset):
    # A profiled schedule is only valid for the weights it was profiled on: replacing a committed tiny model
    # without re-profiling (the command in the provenance) must fail here.
    import hashlib
    import shlex
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    schedule = dc.load_schedule(preset)
    provenance = schedule.provenance
    ckpt = repo / provenance["ckpt_dir"]
    blocks, weights_file = _committed_block_counts(ckpt)
    native = json.loads((ckpt / "tiny_model.json").read_text())["native_size"]
    assert {name: bl.num_blocks for name, bl in schedule.block_lists.items()} == blocks
    assert provenance["size"] == f"{native['width']}*{native['height']}"
    assert provenance["frame_num"] == native["num_frames"]
    weights = (ckpt / weights_file).read_bytes()
    assert hashlib.sha256(weights).hexdigest() == provenance["transformer_sha256"], (
        f"{provenance['ckpt_dir']} changed: re-profile it with the command in the preset's provenance")
    assert schedule.predicted_block_evals(blocks, schedule.num_steps) == tuple(provenance["predicted_block_evals"])
    # The reproduce command's prompt file is committed and holds the profiled prompts.
    command = shlex.split(provenance["reproduce"].split(" (")[0])
    prompts = repo / command[command.index("--prompts") + 1]
    assert prompts.read_text().split("\n")[: len(provenance["prompts"])] == provenance["prompts"]
