"""Workspace cache semantics: hit, stale after option/upstream change, force, atomicity, locking."""

from __future__ import annotations

import json
import multiprocessing as mp
from pathlib import Path

import pytest

from ds4d_cli.errors import WorkspaceError
from ds4d_cli.fsutil import atomic_path, write_bytes_atomic
from ds4d_cli.workspace import Workspace, resolve_workspace_path, run_stage


@pytest.fixture()
def clip(tmp_path: Path) -> Path:
    path = tmp_path / "clip.bin"
    path.write_bytes(b"frames of clip A")
    return path


@pytest.fixture()
def ws(tmp_path: Path, clip: Path) -> Workspace:
    return Workspace.create(tmp_path / "ws", clip)


def _writer(calls: list[str], name: str, content: bytes = b"x"):
    def body(out_dir: Path) -> dict:
        calls.append(name)
        write_bytes_atomic(out_dir / "artifact.bin", content)
        return {"files": 1}

    return body


def test_second_run_is_a_cache_hit(ws: Workspace) -> None:
    calls: list[str] = []
    first = run_stage(ws, "preprocess", options={"size": 256}, inputs=ws.current_inputs("preprocess"), version=1,
                      body=_writer(calls, "pre"))
    second = run_stage(ws, "preprocess", options={"size": 256}, inputs=ws.current_inputs("preprocess"), version=1,
                       body=_writer(calls, "pre"))
    assert not first.cached and second.cached
    assert calls == ["pre"]
    assert second.summary == {"files": 1}
    assert ws.status("preprocess").state == "done"


def test_option_change_makes_stage_stale_and_reruns(ws: Workspace) -> None:
    calls: list[str] = []
    run_stage(ws, "preprocess", options={"size": 256}, inputs=ws.current_inputs("preprocess"), version=1,
              body=_writer(calls, "a"))
    st = ws.status("preprocess", options={"size": 128}, version=1)
    assert st.state == "stale" and "size" in st.reason
    result = run_stage(ws, "preprocess", options={"size": 128}, inputs=ws.current_inputs("preprocess"), version=1,
                       body=_writer(calls, "b"))
    assert not result.cached and calls == ["a", "b"]


def test_upstream_change_makes_downstream_stale(ws: Workspace) -> None:
    calls: list[str] = []
    run_stage(ws, "preprocess", options={"size": 256}, inputs=ws.current_inputs("preprocess"), version=1,
              body=_writer(calls, "pre"))
    run_stage(ws, "generate", options={}, inputs={"preprocess": ws.upstream_digest("preprocess")}, version=1,
              body=_writer(calls, "gen"))
    assert ws.status("generate").state == "done"
    run_stage(ws, "preprocess", options={"size": 64}, inputs=ws.current_inputs("preprocess"), version=1,
              body=_writer(calls, "pre2"))
    st = ws.status("generate")
    assert st.state == "stale" and "preprocess" in st.reason
    again = run_stage(ws, "generate", options={}, inputs={"preprocess": ws.upstream_digest("preprocess")}, version=1,
                      body=_writer(calls, "gen2"))
    assert not again.cached and calls[-1] == "gen2"


def test_code_version_change_is_stale(ws: Workspace) -> None:
    run_stage(ws, "preprocess", options={}, inputs=ws.current_inputs("preprocess"), version=1, body=_writer([], "a"))
    assert ws.status("preprocess", version=2).state == "stale"


def test_force_reruns_a_valid_stage(ws: Workspace) -> None:
    calls: list[str] = []
    kwargs = dict(options={}, inputs=ws.current_inputs("preprocess"), version=1)
    run_stage(ws, "preprocess", body=_writer(calls, "a"), **kwargs)
    result = run_stage(ws, "preprocess", body=_writer(calls, "b"), force=True, **kwargs)
    assert not result.cached and calls == ["a", "b"]


def test_failed_stage_leaves_no_manifest_and_no_artifacts(ws: Workspace) -> None:
    def body(out_dir: Path) -> dict:
        write_bytes_atomic(out_dir / "half.bin", b"half")
        raise RuntimeError("crash mid-stage")

    with pytest.raises(RuntimeError):
        run_stage(ws, "preprocess", options={}, inputs={}, version=1, body=body)
    assert not ws.manifest_path("preprocess").exists()
    assert not (ws.stage_dir("preprocess") / "half.bin").exists()
    assert ws.status("preprocess").state == "missing"


def test_interrupted_rerun_invalidates_old_manifest(ws: Workspace) -> None:
    """A rerun that dies must not leave the previous manifest claiming the new options are done."""
    inputs = ws.current_inputs("preprocess")
    run_stage(ws, "preprocess", options={"size": 1}, inputs=inputs, version=1, body=_writer([], "a"))

    def crash(out_dir: Path) -> dict:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stage(ws, "preprocess", options={"size": 2}, inputs=inputs, version=1, body=crash)
    assert ws.read_manifest("preprocess") is None


def test_atomic_path_leaves_nothing_on_error(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_text("{partial")
            raise ValueError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_replaces_whole_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text('{"old": 1}')
    with atomic_path(target) as tmp:
        tmp.write_text('{"new": 2}')
    assert json.loads(target.read_text()) == {"new": 2}


def _hold_lock(root: str, ready, release) -> None:  # runs in a child process
    ws = Workspace(Path(root))
    with ws.locked():
        ready.set()
        release.wait(20)


def test_second_process_is_refused_by_the_lock(ws: Workspace) -> None:
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold_lock, args=(str(ws.root), ready, release))
    child.start()
    try:
        assert ready.wait(60)
        with pytest.raises(WorkspaceError, match="in use by another ds4d process"):
            with ws.locked():
                pass
    finally:
        release.set()
        child.join(30)
    with ws.locked():  # released when the holder ends
        pass


def test_lock_is_reentrant_in_one_process(ws: Workspace) -> None:
    with ws.locked():
        with ws.locked():
            pass


def test_different_clip_is_refused_without_force(tmp_path: Path, ws: Workspace, clip: Path) -> None:
    other = tmp_path / "other.bin"
    other.write_bytes(b"frames of clip B")
    run_stage(ws, "preprocess", options={}, inputs=ws.current_inputs("preprocess"), version=1, body=_writer([], "a"))
    with pytest.raises(WorkspaceError, match="already holds another clip"):
        Workspace.create(ws.root, other)
    Workspace.create(ws.root, clip)  # the same clip again is fine
    replaced = Workspace.create(ws.root, other, force=True)
    assert replaced.source_record()["source"] == str(other)
    assert replaced.status("preprocess").state == "missing"


def test_edited_source_makes_preprocess_stale(ws: Workspace, clip: Path) -> None:
    run_stage(ws, "preprocess", options={}, inputs=ws.current_inputs("preprocess"), version=1, body=_writer([], "a"))
    assert ws.status("preprocess").state == "done"
    clip.write_bytes(b"the same file, re-encoded")
    st = ws.status("preprocess")
    assert st.state == "stale" and "source clip" in st.reason
    Workspace.create(ws.root, clip)  # same path, new content: accepted, then rerun as stale
    result = run_stage(ws, "preprocess", options={}, inputs=ws.current_inputs("preprocess"), version=1,
                       body=_writer([], "b"))
    assert not result.cached


def test_open_missing_workspace_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceError, match="no ds4d workspace") as info:
        Workspace.open(tmp_path / "nothing")
    assert "ds4d preprocess" in info.value.hint


def test_upstream_not_run_names_the_command(ws: Workspace) -> None:
    with pytest.raises(WorkspaceError) as info:
        ws.upstream_digest("fit")
    assert "ds4d fit" in info.value.hint


def test_workspace_path_resolution(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_workspace_path(None) == tmp_path / "ds4d_workspace"
    monkeypatch.setenv("DS4D_WORKSPACE", str(tmp_path / "env_ws"))
    assert resolve_workspace_path(None) == tmp_path / "env_ws"
    assert resolve_workspace_path(tmp_path / "explicit") == tmp_path / "explicit"


def test_unwritable_workspace_is_a_user_error(tmp_path: Path, clip: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(WorkspaceError):
        Workspace.create(blocker / "ws", clip)
