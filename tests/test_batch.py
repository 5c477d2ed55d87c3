"""`ds4d batch`: clips to workspaces, worker sizing, the live view, and (slow) real batches of tiny
clips on the local worker pool, through a local Ray instance, and with a worker killed mid-fit."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from batch_clips import square_clip
from ds4d_cli import report
from ds4d_cli.batch.clips import assign_workspaces, expand_clips, path_tag
from ds4d_cli.batch.cluster import task_resources, with_bare_ray_as_local
from ds4d_cli.batch.local import default_workers, make_slots
from ds4d_cli.batch.view import Board, BatchLog
from ds4d_cli.batch.worker import ClipEvent, ClipFinished, ClipResult, StageStarted, _ThrottledForwarder
from ds4d_cli.cli import main
from ds4d_cli.errors import Ds4dError

#: The smallest real pipeline: 3 frames of 32 px, input view only, a few fit steps at 16 px.
TINY = ["--prior", "none", "--frames", "3", "--size", "32", "--segmenter", "static-bg",
        "--resolution", "16", "--formats", "ply"]
STAGES = ("preprocess", "generate", "fit", "export/ply")


# ------------------------------------------------------------------------------ clips, names
def test_clip_arguments_expand_globs_lists_and_drop_duplicates(tmp_path: Path) -> None:
    for name in ("a.mp4", "b.mp4", "c.mov"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "list.txt").write_text("# my clips\nc.mov\n\n" + str(tmp_path / "a.mp4") + "  # again\n")
    got = expand_clips([str(tmp_path / "*.mp4"), str(tmp_path / "list.txt"), str(tmp_path / "missing.mp4")])
    assert got == [tmp_path / "a.mp4", tmp_path / "b.mp4", tmp_path / "c.mov", tmp_path / "missing.mp4"]
    with pytest.raises(Ds4dError, match="no clip matches"):
        expand_clips([str(tmp_path / "*.webm")])
    with pytest.raises(Ds4dError, match="cannot read the clip list"):
        expand_clips([str(tmp_path / "nope.txt")])


def test_workspaces_are_named_after_clips_and_stay_put_on_rerun(tmp_path: Path) -> None:
    out = tmp_path / "out"
    one, two, other = tmp_path / "x" / "walk.mp4", tmp_path / "y" / "walk.mp4", tmp_path / "jump 1.mp4"
    clips = assign_workspaces([one, two, other], out)
    assert [c.name for c in clips] == [f"walk-{path_tag(one)}", f"walk-{path_tag(two)}", "jump_1"]
    assert clips == assign_workspaces([one, two, other], out)  # deterministic
    # a clip whose workspace exists keeps it, whatever else the batch holds; a newcomer with the
    # same name does not take it
    ws = out / "walk"
    ws.mkdir(parents=True)
    (ws / "workspace.json").write_text(json.dumps({"source": str(two)}))
    again = assign_workspaces([one, two], out)
    assert again[1].workspace == ws and again[0].name == f"walk-{path_tag(one)}"
    assert assign_workspaces([one], out)[0].name == f"walk-{path_tag(one)}"


def test_bare_ray_flag_means_a_local_instance() -> None:
    assert with_bare_ray_as_local(["batch", "a.mp4", "--ray"]) == ["batch", "a.mp4", "--ray", "local"]
    assert with_bare_ray_as_local(["batch", "--ray", "--out", "o"]) == ["batch", "--ray", "local", "--out", "o"]
    assert with_bare_ray_as_local(["batch", "--ray", "a.mp4"]) == ["batch", "--ray", "local", "a.mp4"]
    for address in ("head:6379", "10.0.0.2:6379", "ray://head:10001", "auto"):
        assert with_bare_ray_as_local(["batch", "--ray", address]) == ["batch", "--ray", address]


def test_workers_are_sized_to_the_machine() -> None:
    assert default_workers(gpus=0, cores=2) == 1  # a CPU fit already keeps 2 cores busy
    assert default_workers(gpus=0, cores=16) == 8
    assert default_workers(gpus=4, cores=64) == 4  # one per GPU
    slots = make_slots(workers=3, gpus=2, cores=12)
    assert [s.gpu for s in slots] == [0, 1, 0]
    assert slots[1].environment() == {"DS4D_RENDER_THREADS": "4", "CUDA_VISIBLE_DEVICES": "1"}
    assert make_slots(workers=1, gpus=0, cores=2)[0].environment() == {"DS4D_RENDER_THREADS": "2"}
    assert task_resources("auto", {"CPU": 32, "GPU": 4}) == {"num_gpus": 1, "num_cpus": 1}
    assert task_resources("cpu", {"CPU": 32, "GPU": 4}) == {"num_gpus": 0, "num_cpus": 2}
    assert task_resources("auto", {"CPU": 1}) == {"num_gpus": 0, "num_cpus": 1}


# ------------------------------------------------------------------------------ what is shown
def test_worker_forwards_throttled_progress_and_the_final_count() -> None:
    sent: list = []
    with report.using(_ThrottledForwarder("red", sent.append)):
        with report.progress("Fitting", total=500, fields=("psnr",), unit="step") as bar:
            for _ in range(500):
                bar.advance(1, psnr=20.0)
    progress = [m.event for m in sent if isinstance(m.event, report.TaskProgress)]
    assert all(isinstance(m, ClipEvent) and m.clip == "red" for m in sent)
    assert 1 <= len(progress) < 50  # not one per step
    assert progress[-1].completed == 500 and isinstance(sent[-1].event, report.TaskEnded)


def test_log_view_prefixes_each_clip_and_reports_failures() -> None:
    out = io.StringIO()
    view = BatchLog(Board(["red", "bad"]), out)
    view.start("red", "2 rasterizer threads")
    view.handle(StageStarted("red", "fit"))
    view.handle(ClipEvent("red", report.TaskStarted("1:1", "Fitting", 10, ("psnr",), "step"), 100.0))
    view.handle(ClipEvent("red", report.TaskProgress("1:1", 10, {"psnr": 25.5}), 102.0))
    view.handle(ClipEvent("red", report.TaskEnded("1:1"), 102.0))
    view.handle(ClipFinished(ClipResult("red", "/c/red.mp4", "/o/red", status="done", seconds=3.0)))
    view.handle(ClipFinished(ClipResult("bad", "/c/bad.mp4", "/o/bad", error="preprocess: cannot read", seconds=1.0)))
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["[red] started on 2 rasterizer threads", "[red] fit"]
    assert "[red] Fitting: step 10/10 psnr 25.5 5.0 it/s took 0:02" in lines  # timed by the worker's clock
    assert lines[-2:] == ["[red] done in 0:03", "[bad] failed in 0:01: preprocess: cannot read"]
    assert view.board.counts() == {"done": 1, "failed": 1}


def test_ray_without_ray_installed_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    (tmp_path / "a.mp4").write_bytes(b"x")
    with pytest.raises(SystemExit) as exc:
        main(["batch", str(tmp_path / "a.mp4"), "--out", str(tmp_path / "out"), "--ray"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err
    assert "error: --ray needs Ray, which is not installed" in err and "ds4d[cluster]" in err


def test_a_missing_clip_fails_without_a_worker_or_a_workspace(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code, err = _batch(capsys, [str(tmp_path / "gone.mp4"), "--out", str(out), "--prior", "none"])
    assert code == 3 and "1 clip(s) failed (gone)" in err and "Traceback" not in err
    record = json.loads((out / "batch.json").read_text())
    (clip,) = record["clips"]
    assert clip["status"] == "failed" and clip["error"].startswith("preprocess: no such file or folder")
    assert record["counts"] == {"done": 0, "failed": 1, "pending": 0}
    assert sorted(p.name for p in out.iterdir()) == [".batch.lock", "batch.json"]  # no workspace was made


def test_ctrl_c_exits_130_and_says_how_to_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from ds4d_cli.batch import runner

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_batch", interrupted)
    code, err = _batch(capsys, [str(tmp_path / "a.mp4"), "--out", str(tmp_path / "out"), "--prior", "none"])
    assert code == 130 and "interrupted" in err and "run the command again to resume" in err


# ------------------------------------------------------------------------------ real batches
@pytest.fixture(scope="module")
def three_clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two good clips with the same file name in two folders, and a text file named .mp4."""
    root = tmp_path_factory.mktemp("clips")
    broken = root / "broken.mp4"
    broken.write_text("this is not a video\n")
    return [square_clip(root / "a" / "clip.mp4", (220, 40, 40)), square_clip(root / "b" / "clip.mp4", (40, 40, 220)),
            broken]


def _batch(capsys: pytest.CaptureFixture[str], args: list[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(["batch", *args])
    return exc.value.code, capsys.readouterr().err


def _check_two_done_one_failed(out: Path, clips: list[Path]) -> dict:
    record = json.loads((out / "batch.json").read_text())
    by_source = {c["source"]: c for c in record["clips"]}
    assert record["counts"] == {"done": 2, "failed": 1, "pending": 0}
    for good in clips[:2]:
        c = by_source[str(good)]
        assert c["status"] == "done" and c["error"] is None, c
        assert Path(c["workspace"]).parent == out and c["clip"].startswith("clip-")  # same name, told apart
        assert set(c["stages"]) == set(STAGES) and isinstance(c["psnr_input"], float) and c["psnr_input"] > 5
        plys = sorted(Path(c["outputs"]["ply"][0]).glob("frame_*.ply"))
        assert len(plys) == 3
    bad = by_source[str(clips[2])]
    assert bad["status"] == "failed" and bad["failed_stage"] == "preprocess"
    assert "cannot read" in bad["error"] and "as a video" in bad["error"] and "\n" not in bad["error"]
    return record


@pytest.mark.slow
def test_batch_two_done_one_failed_then_rerun_is_all_cache_hits(tmp_path: Path, three_clips: list[Path],
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    args = [*map(str, three_clips), "--out", str(out), *TINY, "--steps", "3", "--workers", "2"]
    code, err = _batch(capsys, args)
    assert code == 3, err  # some clip failed
    assert "1 clip(s) failed (broken)" in err and "Traceback" not in err
    record = _check_two_done_one_failed(out, three_clips)
    assert record["runner"]["kind"] == "local" and record["runner"]["workers"] == 2
    assert all(not s["cached"] for c in record["clips"] if c["status"] == "done" for s in c["stages"].values())

    done = [Path(c["workspace"]) for c in record["clips"] if c["status"] == "done"]
    files = {p: p.stat().st_mtime_ns for ws in done for p in ws.rglob("*") if p.is_file() and p.name != ".lock"}
    assert any(p.name == "model.pt" for p in files)
    code, err = _batch(capsys, args)
    assert code == 3, err
    record = _check_two_done_one_failed(out, three_clips)
    for c in record["clips"]:
        if c["status"] == "done":
            assert all(s["cached"] for s in c["stages"].values()), c["stages"]
    assert {p: p.stat().st_mtime_ns for p in files} == files  # nothing re-fitted or rewritten
    assert not list(out.glob("*/batch-error.txt"))  # no internal error anywhere


def _kill_when_checkpointed(workspace_glob: Path, deadline_s: float, killed: list) -> None:
    """SIGKILL the process that holds a workspace once its fit wrote a checkpoint (at step 100)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        found = sorted(workspace_glob.parent.glob(f"{workspace_glob.name}/fit/checkpoints/latest.pt"))
        if found:
            ws = found[0].parents[2]
            pid = int((ws / ".lock").read_text())
            os.kill(pid, signal.SIGKILL)
            killed.append((ws, pid))
            return
        time.sleep(0.05)


@pytest.mark.slow
def test_batch_on_a_local_ray_instance_retries_a_killed_task_from_its_checkpoint(
        tmp_path: Path, three_clips: list[Path], capsys: pytest.CaptureFixture[str]) -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        pytest.fail("ray is not installed: `make cluster` (make test does it) installs ds4d[cluster]")
    out = tmp_path / "out"
    killed: list = []  # the Ray worker running the first clip dies once its fit has a checkpoint
    # a generous deadline: the kill waits only for the first checkpoint, which a busy machine delays
    killer = threading.Thread(target=_kill_when_checkpointed, args=(out / "clip-*", 900, killed), daemon=True)
    killer.start()
    code, err = _batch(capsys, [*map(str, three_clips), "--ray", "--out", str(out), *TINY, "--steps", "130"])
    killer.join()
    assert code == 3, err
    record = _check_two_done_one_failed(out, three_clips)
    runner = record["runner"]
    assert runner["kind"] == "ray" and runner["address"] == "local" and runner["max_retries"] >= 1
    assert runner["task_resources"] == {"num_gpus": 0, "num_cpus": min(2, int(runner["resources"]["CPU"]))}
    assert "[clip-" in err and "Fitting: step 130/130" in err  # the stages' progress came back from the tasks
    # Ray ran the killed task again; it found its workspace and resumed the fit from the checkpoint
    assert len(killed) == 1, "no fit wrote a checkpoint before the batch ended: nothing was killed"
    (ws, pid), = killed
    assert pid != os.getpid()
    retried = next(c for c in record["clips"] if c["workspace"] == str(ws))
    assert retried["status"] == "done" and retried["resumed_from"] == 100, retried
    assert retried["stages"]["preprocess"]["cached"] and not retried["stages"]["fit"]["cached"]
    others = [c for c in record["clips"] if c["status"] == "done" and c["workspace"] != str(ws)]
    assert [c["resumed_from"] for c in others] == [0]


@pytest.mark.slow
def test_worker_killed_mid_fit_fails_its_clip_and_the_rerun_resumes_from_its_checkpoint(
        tmp_path: Path, three_clips: list[Path]) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ds4d_cli", "batch", str(three_clips[0]), "--out", str(out), *TINY, "--steps", "130"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("DS4D_WORKSPACE", None)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    ws = out / "clip"
    checkpoint = ws / "fit" / "checkpoints" / "latest.pt"  # written at step 100 (--checkpoint-every 100)
    deadline = time.monotonic() + 240
    while not checkpoint.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "no checkpoint within 240 s"
        time.sleep(0.05)
    worker = int((ws / ".lock").read_text())  # the process holding the workspace: the clip's worker
    assert worker != proc.pid
    os.kill(worker, signal.SIGKILL)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 3, log
    record = json.loads((out / "batch.json").read_text())
    clip = record["clips"][0]
    assert clip["status"] == "failed" and "killed by SIGKILL" in clip["error"] and "resumes" in clip["error"], clip
    assert (ws / "fit" / "manifest.json").exists() is False  # an interrupted fit never looks done

    rerun = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    clip = json.loads((out / "batch.json").read_text())["clips"][0]
    assert clip["status"] == "done" and clip["resumed_from"] == 100, clip
    assert clip["stages"]["preprocess"]["cached"] and clip["stages"]["generate"]["cached"]
    summary = json.loads((ws / "fit" / "manifest.json").read_text())["summary"]
    assert summary["resumed_from"] == 100 and summary["steps"] == 130
