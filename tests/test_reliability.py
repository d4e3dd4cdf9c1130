"""What a run directory promises (docs/reliability.md), each promise reproduced by the failure it guards
against: a kill inside a checkpoint swap, two writers, corrupt checkpoints and states, a changed schedule
length, a full disk, foreign dtypes, diverged weights. Run as a script
(``python tests/test_reliability.py resave RUN KILL_AT``) it re-saves RUN's latest step and SIGKILLs itself
at the ``KILL_AT``-th rename of the swap."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_cases import all_cases, diffusion, final_tensors  # noqa: E402

from denoisekit.engine import Engine  # noqa: E402
from denoisekit.engine import checkpoint as ckpt  # noqa: E402
from denoisekit.engine.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint  # noqa: E402
from denoisekit.engine.lock import RunLocked  # noqa: E402
from denoisekit.engine.optim import TrainingDiverged  # noqa: E402
from denoisekit.io import load_tensors, save_tensors  # noqa: E402

CASES = all_cases()


pytestmark = pytest.mark.usefixtures("one_thread")


def _train(out: Path, *overrides: str, stop_at: int | None = None, resume: bool = False) -> Path:
    return Engine(diffusion.make(out.parent, *overrides), out, resume=resume, progress=False).fit(stop_at=stop_at)


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The final tensors of the diffusion case trained without interruption."""
    out = tmp_path_factory.mktemp("straight") / "run"
    return final_tensors(_train(out))


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.equal(a[k], b[k]), k


# ------------------------------------------------------------------------------- 1. kill inside the swap


@pytest.mark.parametrize("kill_at", [0, 1, 2])
def test_sigkill_inside_a_resave_swap_loses_nothing(tmp_path, straight, kill_at):
    run = tmp_path / "run"
    _train(run, "train.keep_last=1", stop_at=3)
    proc = subprocess.run([sys.executable, __file__, "resave", str(run), str(kill_at)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    found = list_checkpoints(run / "checkpoints")
    assert [s for s, _ in found] == [3], [p.name for p in (run / "checkpoints").iterdir()]  # readers still find it
    with pytest.warns(UserWarning, match="interrupted save") if kill_at == 2 else contextlib.nullcontext():
        _train(run, "train.keep_last=1", resume=True)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000006"]
    _assert_same(straight, final_tensors(run))


def _resave_and_die(run: Path, kill_at: int) -> None:
    root = run / "checkpoints"
    ck = load_checkpoint(latest_checkpoint(root))
    state = {k: v for k, v in ck["state"].items() if k not in ("format", "step", "optimizer")}
    real, calls = os.replace, []

    def replace(src, dst):
        if len(calls) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        calls.append((src, dst))
        real(src, dst)

    ckpt.os.replace = replace
    ckpt.save_checkpoint(root, ck["step"], model=ck["model"], ema=ck["ema"], optimizer=ck["optimizer"],
                         state=state, keep_last=1)
    raise SystemExit("the swap finished without the injected kill")


def test_resuming_a_finished_run_writes_nothing(tmp_path):
    run = _train(tmp_path / "run")
    before = {p: p.stat().st_mtime_ns for p in (run / "checkpoints").rglob("*")}
    _train(run, resume=True)
    assert {p: p.stat().st_mtime_ns for p in (run / "checkpoints").rglob("*")} == before


# ------------------------------------------------------------------------------- 2. one writer


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_second_writer_is_refused_while_readers_keep_working(name, tmp_path):
    case, run = CASES[name], tmp_path / "run"
    Engine(case.make(tmp_path), run, progress=False).fit(stop_at=case.steps // 2)
    live = Engine(case.make(tmp_path), run, resume=True, progress=False)
    with pytest.raises(RunLocked, match=rf"another training process \(PID {os.getpid()}\)"):
        Engine(case.make(tmp_path), run, resume=True, progress=False)
    assert load_checkpoint(latest_checkpoint(run / "checkpoints"), weights_only=True)["step"] == case.steps // 2
    live.fit()
    assert latest_checkpoint(run / "checkpoints").name == f"step_{case.steps:08d}"
    Engine(case.make(tmp_path), run, resume=True, progress=False).fit()  # released when the run ended


def test_a_run_that_cannot_start_leaves_no_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _train(tmp_path / "a" / "b" / "run", f"init.from_run={tmp_path / 'nowhere'}")
    assert list(tmp_path.iterdir()) == []


def test_a_second_train_command_gets_one_line(tmp_path):
    from denoisekit.engine.lock import RunLock

    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from denoisekit.engine.lock import RunLock;"
                               f" lock = RunLock({str(run)!r}); print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked, match=rf"PID {holder.pid}\)"):
            RunLock(run)
        proc = subprocess.run([sys.executable, "-m", "denoisekit.cli", "train", "configs/digits-demo.yaml", "--out",
                               str(run), "--resume"], capture_output=True, text=True, timeout=120,
                              cwd=Path(__file__).resolve().parents[1])
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip().count("\n") == 0 and f"PID {holder.pid}" in proc.stderr, proc.stderr[-2000:]
    finally:
        holder.kill()
        holder.wait()
    RunLock(run).release()  # the OS dropped the dead holder's lock


# ------------------------------------------------------------------------------- stopping by signal


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_or_ctrl_c_checkpoints_the_step_and_says_so(tmp_path, straight, signum):
    from denoisekit.engine.stopping import TrainingStopped

    run = tmp_path / "run"
    recipe = diffusion.make(tmp_path)
    after = recipe.after_update

    def signal_at_step_2(engine):
        after(engine)
        if engine.step == 1:  # during the second step
            os.kill(os.getpid(), signum)

    recipe.after_update = signal_at_step_2
    with pytest.raises(TrainingStopped, match=rf"stopped by {signal.Signals(signum).name} at step 2 of 6; .*step_00000002"
                       r".*--resume") as e:
        Engine(recipe, run, progress=False).fit()
    assert e.value.exit_code == 128 + signum
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [2]
    _train(run, resume=True)
    _assert_same(straight, final_tensors(run))


def test_a_stopped_train_command_exits_with_the_signal_and_one_line(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "denoisekit.cli", "train", "configs/digits-demo.yaml", "--out",
                             str(tmp_path / "run"), "--set", "train.steps=100000", "--set", "train.log_every=1",
                             "--quiet", "--threads", "1"], stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    log = tmp_path / "run" / "log.csv"
    try:
        for _ in range(600):
            if log.exists() and len(log.read_text().splitlines()) > 2:
                break
            try:
                proc.wait(timeout=0.5)
                break
            except subprocess.TimeoutExpired:
                pass
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("denoisekit: stopped by SIGTERM at step ") and "--resume" in last, err[-2000:]
    step = int(last.split(" at step ")[1].split()[0])
    assert [s for s, _ in list_checkpoints(tmp_path / "run" / "checkpoints")][-1] == step


# ------------------------------------------------------------------------------- 3. corrupt checkpoints


def _truncate(path: Path, name: str) -> None:
    f = path / name
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _edit_optimizer(path: Path, edit) -> None:
    tensors = load_tensors(path / "optimizer.safetensors")
    edit(tensors)
    save_tensors(path / "optimizer.safetensors", tensors)


def _edit_state(path: Path, edit) -> None:
    doc = json.loads((path / "state.json").read_text())
    edit(doc)
    (path / "state.json").write_text(json.dumps(doc))


def _first(prefix: str, tensors: dict) -> str:
    return next(k for k in sorted(tensors) if k.startswith("state.") and k.endswith(prefix))


CORRUPTIONS = {
    "truncated weights": (lambda p: _truncate(p, "model.safetensors"), r"model\.safetensors: cannot read"),
    "truncated optimizer": (lambda p: _truncate(p, "optimizer.safetensors"), r"optimizer\.safetensors: cannot read"),
    "state.json not JSON": (lambda p: (p / "state.json").write_text("{\"format\": "), r"state\.json: not valid JSON"),
    "optimizer tensor shape": (lambda p: _edit_optimizer(p, lambda t: t.__setitem__(
        k := _first("exp_avg", t), t[k].flatten()[:3].clone())), r"optimizer\.safetensors: state\.\d+\.exp_avg has shape \(3,\)"),
    "optimizer key missing": (lambda p: _edit_optimizer(p, lambda t: t.pop(_first("exp_avg_sq", t))),
                              r"optimizer\.safetensors: optimiser state of parameter \d+ lacks exp_avg_sq"),
    "optimizer NaN": (lambda p: _edit_optimizer(p, lambda t: t[_first("exp_avg", t)].view(-1).__setitem__(0, float("nan"))),
                      r"optimizer\.safetensors: state\.\d+\.exp_avg contains NaN"),
    "rng malformed": (lambda p: _edit_state(p, lambda d: d["rng"][0].__setitem__("torch", "abcd")),
                      r"state\.json \(rng\[0\]\): RNG state 'torch' is not \d+ bytes"),
    "numpy rng short": (lambda p: _edit_state(p, lambda d: d["rng"][0]["numpy"].__setitem__("keys", [1, 2])),
                        r"RNG state 'numpy' is not an MT19937 state"),
    "scheduler missing": (lambda p: _edit_state(p, lambda d: d.pop("scheduler")), r"state\.json: missing key 'scheduler'"),
    "EMA state wrong": (lambda p: _edit_state(p, lambda d: d["ema"].__setitem__("num_updates", -4)), r"num_updates"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_a_corrupt_only_checkpoint_is_one_line_naming_file_and_key(tmp_path, kind):
    corrupt, message = CORRUPTIONS[kind]
    run = _train(tmp_path / "run", stop_at=3)
    corrupt(latest_checkpoint(run / "checkpoints"))
    with pytest.raises(ValueError, match=message) as e:
        _train(run, resume=True)
    assert "no checkpoint can be loaded" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("kind", ["truncated weights", "optimizer tensor shape", "rng malformed"])
def test_a_corrupt_latest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, straight, kind):
    corrupt, message = CORRUPTIONS[kind]
    run = _train(tmp_path / "run")  # steps 3 and 6 kept
    bad = latest_checkpoint(run / "checkpoints")
    corrupt(bad)
    with pytest.warns(UserWarning, match=rf"{bad.name} is unreadable \(.*{message}.*resumed from .*step_00000003"):
        _train(run, resume=True)
    assert (run / "checkpoints" / "step_00000006.corrupt").is_dir()
    _assert_same(straight, final_tensors(run))


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_recipe_resumes_past_a_corrupt_latest_checkpoint(name, tmp_path):
    case = CASES[name]
    run = tmp_path / "run"
    Engine(case.make(tmp_path), run, progress=False).fit(stop_at=case.steps // 2)
    Engine(case.make(tmp_path), run, resume=True, progress=False).fit(stop_at=case.steps // 2 + 1)
    expected_step, kept = case.steps // 2, len(list_checkpoints(run / "checkpoints"))
    _truncate(latest_checkpoint(run / "checkpoints"), "model.safetensors")
    if kept == 1:  # train.keep_last: 1 (toy2d's throwaway runs): nothing to fall back to, and it says so
        with pytest.raises(ValueError, match=r"no checkpoint can be loaded \(step_\d+: .*model\.safetensors"):
            Engine(case.make(tmp_path), run, resume=True, progress=False)
        return
    with pytest.warns(UserWarning, match=rf"resumed from the newest intact one, step_{expected_step:08d}"):
        e = Engine(case.make(tmp_path), run, resume=True, progress=False)
    assert e.step == expected_step
    e.fit()


# ------------------------------------------------------------------------------- 4. train.steps on resume


def test_changing_steps_under_a_cosine_schedule_is_refused(tmp_path):
    run = _train(tmp_path / "run", stop_at=3)
    with pytest.raises(ValueError, match=r"train\.steps 6 and optim\.schedule cosine.*init\.from_run"):
        _train(run, "train.steps=8", resume=True)


def test_changing_steps_under_a_constant_schedule_equals_the_longer_run(tmp_path):
    const = ("optim.schedule=constant",)
    a = _train(tmp_path / "a", *const, "train.steps=8")
    b = _train(tmp_path / "b", *const, stop_at=3)
    _train(b, *const, "train.steps=8", resume=True)
    _assert_same(final_tensors(a), final_tensors(b))


# ------------------------------------------------------------------------------- 5. full disk, dtypes, divergence


@pytest.mark.parametrize("how", ["OSError", "SafetensorError"])
def test_a_full_disk_during_a_save_says_what_and_loses_nothing(tmp_path, monkeypatch, how):
    run = _train(tmp_path / "run", stop_at=3)
    real, calls = ckpt.save_tensors, []

    def full(path, tensors, metadata=None):
        calls.append(path)
        if how == "OSError":
            raise OSError(errno.ENOSPC, "No space left on device")
        from safetensors import SafetensorError
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(ckpt, "save_tensors", full)
    with pytest.raises(OSError, match=r"no space left .*step_00000006 \(it needs about [\d.]+ MiB, [\d.]+ MiB are free\)"
                       r"; nothing was lost: the last checkpoint step_00000003 is intact") as e:
        _train(run, resume=True)
    assert e.value.errno == errno.ENOSPC and calls
    monkeypatch.setattr(ckpt, "save_tensors", real)
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000003"]
    _train(run, resume=True)


def test_a_full_disk_at_the_first_write_is_one_cli_line(tmp_path, monkeypatch, capsys):
    from denoisekit import io
    from denoisekit.cli import main

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    real = io.write_atomic
    monkeypatch.setattr(io, "write_atomic", lambda path, write: real(path, full))
    rc = main(["train", "configs/digits-demo.yaml", "--out", str(tmp_path / "run"), "--set", "train.steps=1",
               "--set", "optim.warmup_steps=0"])  # no warmup warning: the error is the only line
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.count("\n") == 0, err
    assert "no space left on the device writing" in err and "nothing was lost" in err, err


def test_weights_of_another_dtype_are_refused_or_cast_with_a_warning():
    from torch import nn

    from denoisekit.engine.checkpoint import load_weights

    net = nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"x\.safetensors: tensor 'weight' is torch\.int64, the model needs torch\.float32"):
        load_weights(net, {"weight": torch.ones(2, 2, dtype=torch.int64), "bias": torch.zeros(2)}, "x.safetensors")
    with pytest.warns(UserWarning, match=r"'weight' is stored as torch\.float16"):
        load_weights(net, {"weight": torch.ones(2, 2, dtype=torch.float16), "bias": torch.zeros(2)}, "x.safetensors")
    assert net.weight.dtype == torch.float32 and torch.equal(net.weight, torch.ones(2, 2))


def test_diverged_weights_are_never_checkpointed(tmp_path):
    run = _train(tmp_path / "run", stop_at=3)
    e = Engine(diffusion.make(tmp_path), run, resume=True, progress=False)
    with torch.no_grad():
        next(iter(e.recipe.modules.values())).parameters().__next__().view(-1)[0] = 2e28
    with pytest.raises(TrainingDiverged, match=r"magnitude 2e\+28 at step 3 .*last good checkpoint is .*step_00000003"):
        e.save()
    e.close()
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [3]


def test_checkpoint_files_share_the_run_directory_mode(tmp_path):
    run = _train(tmp_path / "run", stop_at=3)
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in latest_checkpoint(run / "checkpoints").iterdir()}
    assert set(modes.values()) == {"0o644"}, modes


if __name__ == "__main__" and len(sys.argv) == 4 and sys.argv[1] == "resave":
    _resave_and_die(Path(sys.argv[2]), int(sys.argv[3]))
