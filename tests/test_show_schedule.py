"""scripts/show_schedule.py and delta_cache/plan.py: a schedule's plan at any step count, against the blocks
the cache really skips."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import delta_cache as dc
from delta_cache.baselines import BlockCounter
from script_loader import load_script
from tiny_wan import run, tiny_wan_pipeline

REPO = Path(__file__).resolve().parent.parent
SHOW = REPO / "scripts" / "show_schedule.py"


def _show(argv):
    return load_script(SHOW).main([str(a) for a in argv])


@pytest.mark.parametrize("steps", [12, 7, 20])  # the schedule's own grid, fewer steps, more steps
def test_the_plan_is_what_the_cache_skips(tmp_path, steps):
    schedule = tmp_path / "four.json"
    schedule.write_text(json.dumps({"format_version": 1, "name": "four", "num_steps": 12, "block_lists": {
        "blocks": {"num_blocks": 4, "background_blocks": [1, "2-3"], "refresh_steps": ["0-2", 5, 8, 11]}}}))
    text = _show([schedule, "--steps", steps])
    [(computed, total)] = re.findall(r"blocks \(4 blocks\): .*; (\d+)/(\d+) block evaluations", text)
    assert f"per CFG branch: {computed}/{total} block evaluations" in text and int(total) == 4 * steps

    pipe = tiny_wan_pipeline(num_layers=4)
    counter = BlockCounter(pipe.transformer)  # real block forwards, installed before the cache
    handle = dc.apply_delta_cache(pipe.transformer, dc.load_schedule(schedule))
    run(pipe, steps=steps)
    assert counter.count == 2 * int(computed) < 2 * int(total)  # two CFG branches, each as planned
    assert handle.predicted_block_evals(steps) == (int(computed), int(total))


def test_presets_are_listed_and_described_at_other_step_counts(tmp_path):
    listing = _show([])
    assert [line.split(":")[0] for line in listing.splitlines()] == dc.list_presets()
    text = _show(["hunyuanvideo-720p", "--png", tmp_path / "grid.png"])
    assert "transformer_blocks (20 blocks): reuses 14 background blocks [6-19] on 36 of 50 steps" in text
    assert "per CFG branch: 1632/3000 block evaluations, ideal speedup 1.84x" in text  # the paper's count
    assert (tmp_path / "grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    few = _show(["wan2.1-t2v-14b", "--steps", "8"])  # every run step holds a refresh of the 50-step grid
    assert "320/320 block evaluations" in few and "it reuses nothing at 8 steps: profile a schedule for 8" in few
    empty = tmp_path / "empty.json"  # no background block: no step count helps
    empty.write_text(json.dumps({"format_version": 1, "num_steps": 10, "block_lists": {
        "blocks": {"num_blocks": 40, "background_blocks": [], "refresh_steps": [0]}}}))
    assert "it reuses nothing at 10 steps: it names no background block" in _show([empty])


@pytest.mark.parametrize("argv, message", [
    (["nope"], "unknown schedule preset 'nope'"),
    (["wan2.1-t2v-14b", "--depths", "blocks=30"], "made for 40 blocks in 'blocks', but this model has 30"),
    (["wan2.1-t2v-14b", "--depths", "blocks"], "--depths takes LIST=BLOCKS"),
    (["wan2.1-t2v-14b", "--steps", "0"], "--steps: must be >= 1"),
    (["wan2.1-t2v-14b", "--png", "no/such/folder/grid.png"], "expected a .png file in an existing folder"),
    (["wan2.1-t2v-14b", "--png", "grid.jpg"], "the file name must end in .png"),
    (["wan2.1-t2v-14b", "--png", "/proc/grid.png"], "cannot create files in /proc"),
    (["{folder}"], "is a folder, not a schedule file or a preset"),
    (["{schedule}"], "does not record num_blocks for blocks; give the model's depths"),
])
def test_bad_input_is_one_line(tmp_path, argv, message):
    schedule = tmp_path / "bare.json"
    schedule.write_text(json.dumps({"format_version": 1, "num_steps": 10, "block_lists": {
        "blocks": {"background_blocks": [1], "refresh_steps": [0, 5]}}}))
    proc = subprocess.run([sys.executable, str(SHOW), *(a.format(schedule=schedule, folder=tmp_path.name)
                                                        for a in argv)], cwd=tmp_path.parent,
                          capture_output=True, text=True, timeout=60)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and message in lines[0], proc.stderr
    assert proc.stdout == "" and list(tmp_path.iterdir()) == [schedule]


def test_help_gives_the_whole_first_paragraph():
    proc = subprocess.run([sys.executable, str(SHOW), "--help"], capture_output=True, text=True, timeout=60)
    text = " ".join(proc.stdout.split())
    assert proc.returncode == 0 and "and the block evaluations it leaves per CFG branch" in text
