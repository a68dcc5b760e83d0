"""The shared flag type for counts: every script's --threads refuses a bad value with one line and exit 2."""

import subprocess
import sys
from pathlib import Path

import pytest

from delta_cache.cli import OneLineArgumentParser, positive_int
from delta_cache.errors import UserInputError

REPO = Path(__file__).resolve().parents[1]


def test_positive_int_accepts_counts_and_refuses_the_rest(capsys):
    parser = OneLineArgumentParser()
    parser.add_argument("--threads", type=positive_int)
    assert parser.parse_args(["--threads", "3"]).threads == 3
    for bad, says in (("0", "must be >= 1, got 0"), ("-2", "must be >= 1, got -2"), ("two", "expected an integer")):
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args(["--threads", bad])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert says in err and "--threads" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("script", ["bench_cache.py", "demo.py", "train_tiny.py", "check_quality.py"])
def test_scripts_refuse_zero_threads_in_one_line(script):
    result = subprocess.run([sys.executable, "-X", "importtime", str(REPO / "scripts" / script), "--threads", "0"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    imports = [line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    errors = [line for line in result.stderr.splitlines() if not line.startswith("import time:")]
    assert errors == ["error: argument --threads: must be >= 1, got 0 (see --help)"]
    assert "diffusers" not in imports  # flag errors come before the seconds of importing diffusers


def test_output_paths_are_checked_before_a_long_run(tmp_path):
    from delta_cache.cli import check_output_path

    (tmp_path / "a_file").write_text("x")
    check_output_path("--save_file", tmp_path / "new" / "deeper" / "v.mp4")  # folders are made when writing
    check_output_path("--save-path", tmp_path / "results", folder=True)
    for args, message in [(("--save_file", tmp_path), "is a folder; give a file name"),
                          (("--save_file", tmp_path / "a_file" / "v.mp4"), "a_file is a file, so nothing can be written"),
                          (("--save-path", tmp_path / "a_file", True), "is a file; give a folder"),
                          # (no permission bit stops root; /proc takes no new files from anyone)
                          (("--save-path", "/proc/results", True), "cannot create files in /proc"),
                          (("--save_file", "/proc/v.mp4"), "cannot create files in /proc")]:
        with pytest.raises(UserInputError, match=message):
            check_output_path(*args)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # (the tries leave nothing behind)


@pytest.mark.parametrize("script, flags", [
    ("demo.py", []), ("bench_fidelity.py", []), ("check_quality.py", []),
    ("profile_evidence.py", ["--ckpt_dir", str(REPO / "checkpoints" / "tiny-wan2.1-t2v")]),
    ("make_tiny_checkpoint.py", ["--family", "wan"]),
])
def test_scripts_refuse_an_output_folder_that_is_a_file_before_running(tmp_path, script, flags):
    a_file = tmp_path / "results"
    a_file.write_text("not a folder")
    result = subprocess.run([sys.executable, str(REPO / "scripts" / script), *flags, "--out", str(a_file)],
                            capture_output=True, text=True, cwd=tmp_path, timeout=300,
                            env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1", "HOME": str(tmp_path)})
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and errors == [f"error: --out {a_file} is a file; give a folder"], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results"]


def test_bounded_float_refuses_nan_inf_and_out_of_range(capsys):
    from delta_cache.cli import bounded_float

    parser = OneLineArgumentParser()
    parser.add_argument("--share", type=bounded_float(0, 1))
    parser.add_argument("--shift", type=bounded_float(0, above=True))
    assert parser.parse_args(["--share", "0.5", "--shift", "5"]).share == 0.5
    for flag, bad in (("--share", "nan"), ("--share", "1.5"), ("--share", "-0.1"), ("--shift", "0"),
                      ("--shift", "inf"), ("--shift", "x")):
        with pytest.raises(SystemExit):
            parser.parse_args([flag, bad])
        err = capsys.readouterr().err
        assert flag in err and len(err.strip().splitlines()) == 1, err
