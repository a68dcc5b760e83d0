"""Carrying a training run between machines that keep nothing: --pack_state / --unpack_state, the warm
restart they imply, --check_vae_state, runs/session.sh and the committed runs/ (delta_cache/training/carry.py)."""

import json
import os
import subprocess

import pytest
import torch

from delta_cache.errors import UserInputError
from delta_cache.models.wan.checkpoint import load_wan_components
from tiny_training import REPO, TINY, train_tiny
from tiny_training import run as _run
from tiny_training import run_in_slices as _run_in_slices


def test_a_packed_state_carries_the_run_to_another_machine(tmp_path, monkeypatch):
    def run(out, *extra):
        return _run(out, "--vae_steps", "6", *extra)

    run(tmp_path / "run", "--stop_after_minutes", "1e-9")
    _run_in_slices(run, tmp_path / "run", until=lambda s: s.get("paused") == {"stage": "vae", "step": 3}, resume=True)
    work = tmp_path / "run.work"
    # The round trip of the VAE a state holds (any stage), logged with the run's log (so it travels too).
    check = train_tiny.main(["--check_vae_state", "--work_dir", str(work), "--vae_check_videos", "1"])
    assert (check["stage"], check["step"], check["videos"]) == ("vae", 3, 1) and 0 <= check["agreement"] <= 1
    assert '"stage": "vae_check", "step": 3, "state_stage": "vae"' in (work / train_tiny.LOG_FILE).read_text()
    zeroed = torch.load(work / train_tiny.STATE_FILE, weights_only=False)
    zeroed["vae"] = {k: torch.zeros_like(w) for k, w in zeroed["vae"].items()}
    (tmp_path / "zeroed").mkdir()
    torch.save(zeroed, tmp_path / "zeroed" / train_tiny.STATE_FILE)
    blank = train_tiny.main(["--check_vae_state", "--work_dir", str(tmp_path / "zeroed"), "--vae_check_videos", "1"])
    assert blank["psnr"] != check["psnr"]  # it reads the state's weights
    with pytest.raises(UserInputError, match="no training state"):
        train_tiny.main(["--check_vae_state", "--work_dir", str(tmp_path / "empty")])
    packed_file = tmp_path / "carried" / "state.packed.pt"
    packed = train_tiny.main(["--pack_state", str(packed_file), "--work_dir", str(work)])
    assert (packed["stage"], packed["step"]) == ("vae", 3)
    first_bytes = packed_file.read_bytes()
    train_tiny.main(["--pack_state", str(packed_file), "--work_dir", str(work)])
    assert packed_file.read_bytes() == first_bytes  # the same state packs to the same bytes: no new blob
    # fp16 weights and no optimizer moments: a fraction of the full state (12 bytes a parameter)
    assert packed["bytes"] < 0.4 * (work / train_tiny.STATE_FILE).stat().st_size

    fresh = tmp_path / "fresh.work"  # another machine: nothing but the packed file
    unpacked = train_tiny.main(["--unpack_state", str(packed_file), "--work_dir", str(fresh)])
    assert unpacked == {"stage": "vae", "step": 3}
    original = torch.load(work / train_tiny.STATE_FILE, weights_only=False)
    unpacked = torch.load(fresh / train_tiny.STATE_FILE, weights_only=False)
    assert original["vae_optimizer"] and not unpacked.get("vae_optimizer")
    assert unpacked["warm_restarts"] == {"vae": 3} and unpacked["args"] == original["args"]
    assert all(unpacked["vae"][k].dtype == torch.float32 and torch.equal(unpacked["vae"][k], w.half().float())
               for k, w in original["vae"].items())
    assert (fresh / train_tiny.LOG_FILE).read_bytes() == (work / train_tiny.LOG_FILE).read_bytes()

    # The resumed run warms its learning rate up again from step 3 and finishes; its summaries cover steps 0-5.
    restarts = []
    learning_rate = train_tiny.learning_rate

    def spy(args, base, step, total, restart=None):
        restarts.append((step, restart))
        return learning_rate(args, base, step, total, restart)

    monkeypatch.setattr(train_tiny, "learning_rate", spy)
    summaries = run(tmp_path / "fresh", "--work_dir", str(fresh), "--resume")
    assert [r for r in restarts if r[1] is not None] == [(3, 3), (4, 3), (5, 3)] and len(restarts) == 3 + 4
    assert summaries["vae"]["steps"] == 6 and summaries["dit"]["steps"] == 4
    load_wan_components(tmp_path / "fresh", task="t2v-14B")

    with pytest.raises(UserInputError, match="already holds state.pt, latents.pt"):
        train_tiny.main(["--unpack_state", str(packed_file), "--work_dir", str(fresh)])
    # The committed progress never goes backwards: the finished run's pack is not replaced by step 3's.
    train_tiny.main(["--pack_state", str(packed_file), "--work_dir", str(fresh)])
    with pytest.raises(UserInputError, match="is further on \\(done step 0\\) than .* \\(vae step 3\\)"):
        train_tiny.main(["--pack_state", str(packed_file), "--work_dir", str(work)])
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / train_tiny.STATE_FILE).write_bytes(first_bytes[:1000])
    with pytest.raises(UserInputError, match="is not readable"):
        train_tiny.main(["--pack_state", str(tmp_path / "p.pt"), "--work_dir", str(tmp_path / "torn")])
    with pytest.raises(UserInputError, match="does not exist"):
        train_tiny.main(["--unpack_state", str(tmp_path / "nope.pt"), "--work_dir", str(tmp_path / "w1")])
    (tmp_path / "garbage.pt").write_bytes(b"not a torch file")
    with pytest.raises(UserInputError, match="is not readable"):
        train_tiny.main(["--unpack_state", str(tmp_path / "garbage.pt"), "--work_dir", str(tmp_path / "w2")])
    torch.save({"stage": "vae"}, tmp_path / "foreign.pt")
    with pytest.raises(UserInputError, match="not a packed training state"):
        train_tiny.main(["--unpack_state", str(tmp_path / "foreign.pt"), "--work_dir", str(tmp_path / "w3")])
    assert not (tmp_path / "w2").exists() and not (tmp_path / "w3").exists()  # nothing half-written
    with pytest.raises(UserInputError, match="no training state"):
        train_tiny.main(["--pack_state", str(tmp_path / "p.pt"), "--work_dir", str(tmp_path / "empty")])
    with pytest.raises(UserInputError, match="needs --work_dir"):
        train_tiny.main(["--pack_state", str(tmp_path / "p.pt")])
    with pytest.raises(UserInputError, match="separate commands"):
        train_tiny.main(["--pack_state", str(tmp_path / "p.pt"), "--unpack_state", str(packed_file),
                         "--work_dir", str(fresh)])
    with pytest.raises(UserInputError, match="--out is required"):
        train_tiny.main(TINY)


def test_a_packed_transformer_stage_restarts_from_its_ema_stored_once(tmp_path):
    def run(out, *extra):
        return _run(out, "--train_text_encoder", *extra)

    run(tmp_path / "run", "--stop_after_minutes", "1e-9")
    _run_in_slices(run, tmp_path / "run", until=lambda s: s.get("paused") == {"stage": "dit", "step": 2}, resume=True)
    work, packed_file, fresh = tmp_path / "run.work", tmp_path / "state.packed.pt", tmp_path / "fresh.work"
    train_tiny.main(["--pack_state", str(packed_file), "--work_dir", str(work)])
    original = torch.load(work / train_tiny.STATE_FILE, weights_only=False)
    packed = torch.load(packed_file, weights_only=False)
    # the raw weights are the EMA tensors themselves: one storage in the file
    assert all(packed["transformer"][k].untyped_storage().data_ptr() == packed["ema"][k].untyped_storage().data_ptr()
               for k in packed["ema"])
    train_tiny.main(["--unpack_state", str(packed_file), "--work_dir", str(fresh)])
    unpacked = torch.load(fresh / train_tiny.STATE_FILE, weights_only=False)
    assert unpacked["warm_restarts"] == {"dit": 2} and not unpacked.get("transformer_optimizer")
    for k, w in original["ema"].items():
        rounded = w.half().float()
        assert torch.equal(unpacked["transformer"][k], rounded) and torch.equal(unpacked["ema"][k], rounded)
        assert unpacked["transformer"][k].data_ptr() != unpacked["ema"][k].data_ptr()  # trained apart again
    assert not torch.equal(original["transformer"]["proj_out.weight"], original["ema"]["proj_out.weight"])
    # the tied embedding of the trained UMT5 (two names, one EMA entry) follows its twin
    text, text_ema = unpacked["text_encoders"]["text_encoder"], original["text_ema"]["text_encoder"]
    assert torch.equal(text["encoder.embed_tokens.weight"], text_ema["shared.weight"].half().float())
    assert not (fresh / train_tiny.LATENTS_FILE).exists()  # too large to pack:
    summaries = run(tmp_path / "fresh", "--work_dir", str(fresh), "--resume")  # re-encodes, trains, saves
    assert summaries["dit"]["steps"] == 4
    load_wan_components(tmp_path / "fresh", task="t2v-14B")


def test_runs_session_carries_a_run_across_fresh_machines(tmp_path):
    # runs/session.sh as a session on a fresh machine uses it: a new WORK_ROOT each time, only the packed file kept.
    (tmp_path / "runs" / "tiny").mkdir(parents=True)
    (tmp_path / "runs" / "tiny" / "recipe.args").write_text(f"# a tiny run\n{' '.join(TINY)}\n--vae_steps 3  # end\n")
    packed_file = tmp_path / "runs" / "tiny" / "state.packed.pt"

    def session(machine: str, minutes: str, *extra: str, name: str = "tiny") -> subprocess.CompletedProcess:
        env = {**os.environ, "RUNS_DIR": str(tmp_path / "runs"), "WORK_ROOT": str(tmp_path / machine)}
        return subprocess.run(["bash", str(REPO / "runs" / "session.sh"), name, minutes, "1", *extra], env=env,
                              capture_output=True, text=True)

    done = session("m1", "1e-9")  # the smallest budget: one step
    assert done.returncode == 0, done.stderr[-2000:]
    packed = torch.load(packed_file, weights_only=False)
    assert (packed["stage"], packed["step"]) == ("vae", 1) and "unpacked" not in done.stdout + done.stderr
    # The second machine unpacks it and goes on; flags after the threads win over the recipe's: it stops at
    # a VAE gate after its step, fails the session, and still packs the state (for a longer --vae_steps).
    gated = session("m2", "60", "--vae_steps", "2", "--vae_check_videos", "1", "--min_vae_agreement", "1")
    assert gated.returncode != 0 and "train the VAE longer" in gated.stderr, gated.stderr[-2000:]
    assert "unpacked" in gated.stdout + gated.stderr and "complete" not in gated.stdout
    packed = torch.load(packed_file, weights_only=False)
    assert (packed["stage"], packed["step"]) == ("vae", 2)
    [work] = (tmp_path / "m2").glob("tiny-*.work")  # named after the packed file it started from
    log = (work / train_tiny.LOG_FILE).read_text()  # the first machine's step came along
    assert [json.loads(line)["step"] for line in log.splitlines() if "loss" in json.loads(line)] == [0, 1]
    missing = session("m3", "1", name="nope")
    assert missing.returncode == 2 and "no run 'nope'" in missing.stderr


@pytest.mark.parametrize("run", sorted(p.parent.name for p in (REPO / "runs").glob("*/recipe.args")))
def test_carried_runs_recipes_parse_and_match_their_packed_state(run):
    # The next session resumes runs/<run>/state.packed.pt with runs/<run>/recipe.args: a recipe that no longer
    # parses, or whose model/data flags differ from the packed run's, would refuse to go on.
    folder = REPO / "runs" / run
    recipe = (folder / "recipe.args").read_text()
    args = train_tiny.parse_args(" ".join(line.split("#")[0] for line in recipe.splitlines()).split() + ["--out", "/x"])
    assert args.family in train_tiny.FAMILIES
    if (folder / "state.packed.pt").exists():
        packed = torch.load(folder / "state.packed.pt", map_location="cpu", weights_only=False)
        differ = train_tiny.fixed_args_changed(packed, args)
        assert not differ, f"runs/{run}: recipe.args and the packed run differ in {differ}"
