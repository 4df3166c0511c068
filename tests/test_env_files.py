"""Rollouts to files: chunk files through the writers, the manifest, resume, integrity, the CLI."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import laden
from laden.errors import ConfigError, DataError
from laden.plugins.sources.env_batch import EnvBatchSource
from laden.stream.envs import EnvRunner, EnvSpec, read_rollouts, write_rollouts
from laden.stream.envs.files import chunk_arrays
from laden.testing import check_stateful, run_cli

GRID = {"env": "grid", "num_envs": 6, "rollout_len": 8, "seed": 7}
SHORT = {"max_episode_steps": 5}


def digests(directory: Path) -> dict[str, tuple[str, str]]:
    """Per chunk file: its blake2b and its content digest, from the manifest."""
    files = json.loads((directory / "manifest.json").read_text())["files"]
    return {name: (r["blake2b"], r["content"]) for name, r in files.items()}


def file_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("rollout-*"))}


def every_file(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


# ------------------------------------------------------------ test envs


class PassThroughEnv:
    """A walk to a goal whose ``goal`` leaf ``step`` hands back unchanged (the same array):
    the runner then writes resets into that array, which a state taken before shares."""

    backend: ClassVar[str] = "numpy"
    spec = EnvSpec(obs_shape=(2,), obs_dtype=np.int32, obs_high=16, action_high=3)

    def reset(self, keys: Any) -> tuple[dict[str, Any], Any]:
        keys = np.asarray(keys, dtype=np.uint64)
        goal = (keys % np.uint64(16)).astype(np.int32)
        state = {"pos": np.zeros(len(keys), np.int32), "goal": goal}
        return state, np.stack([state["pos"], goal], 1)

    def step(self, state: dict[str, Any], action: Any) -> tuple[Any, Any, Any, Any, Any]:
        pos = np.clip(state["pos"] + np.asarray(action) - 1, 0, 15).astype(np.int32)
        goal = state["goal"]
        term = pos == goal
        return (
            {"pos": pos, "goal": goal},
            np.stack([pos, goal], 1),
            term.astype(np.float32),
            term,
            np.zeros(len(pos), bool),
        )


class InPlaceEnv:
    """An env that keeps its state inside itself (``reset_where``), as gymnasium wrappers do."""

    backend: ClassVar[str] = "numpy"
    spec = EnvSpec(obs_shape=(1,), obs_dtype=np.int64, obs_high=8, action_high=2)

    def __init__(self) -> None:
        self.count = np.zeros(0, np.int64)

    def reset(self, keys: Any) -> tuple[Any, Any]:
        self.count = (np.asarray(keys, dtype=np.uint64) % np.uint64(3)).astype(np.int64)
        return None, self.count[:, None].copy()

    def reset_where(self, state: Any, mask: Any, keys: Any) -> tuple[Any, Any]:
        self.count[mask] = (np.asarray(keys, dtype=np.uint64)[mask] % np.uint64(3)).astype(np.int64)
        return None, self.count[:, None].copy()

    def step(self, state: Any, action: Any) -> tuple[Any, Any, Any, Any, Any]:
        self.count = self.count + np.asarray(action)
        term = self.count >= 7
        return None, self.count[:, None].copy(), np.ones(len(term), np.float32), term, ~term & False


def make_pass_through(**_: Any) -> PassThroughEnv:
    return PassThroughEnv()


def make_in_place(**_: Any) -> InPlaceEnv:
    return InPlaceEnv()


# ------------------------------------------------------------ the runner's state


class Chunks:
    """A runner as an endless iterable of rollout chunks, in ``array_backend`` arrays."""

    def __init__(self, array_backend: str = "numpy", **settings: Any) -> None:
        self.source = EnvBatchSource(**{**GRID, "array_backend": array_backend, **settings})
        self.runner = self.source.runner()

    def __iter__(self) -> Any:
        while True:
            yield self.runner.rollout(self.source.rollout_len).to(self.source.array_backend)

    def state_dict(self) -> dict[str, Any]:
        return self.runner.state_dict()  # type: ignore[no-any-return]

    def load_state_dict(self, state: Any) -> None:
        self.runner.load_state_dict(state)


@pytest.mark.parametrize("autoreset", ["next_step", "same_step", "disabled", "pool"])
@pytest.mark.parametrize("array_backend", ["numpy", "torch"])
def test_env_runner_resumes_from_its_state(autoreset: str, array_backend: str) -> None:
    if array_backend == "torch":
        pytest.importorskip("torch", reason="the torch extra is not installed")

    def foreign(state: dict[str, Any]) -> dict[str, Any]:
        return {**state, "seed": state["seed"] + 1}

    check_stateful(
        lambda: Chunks(array_backend, autoreset=autoreset, env_options=SHORT),
        cuts=(0, 1, 3),
        tail=3,
        json_state=False,
        foreign=foreign,
    )


@pytest.mark.parametrize("autoreset", ["same_step", "pool", "next_step"])
def test_a_taken_state_does_not_change_as_the_runner_goes_on(autoreset: str) -> None:
    """The env hands a leaf back unchanged; resets written into it must not reach the state."""
    check_stateful(
        lambda: Chunks(env="tests.test_env_files:make_pass_through", autoreset=autoreset),
        cuts=(1, 2),
        tail=3,
        json_state=False,
    )


def test_env_runner_state_bytes_continue_exactly() -> None:
    """Save after k chunks, a new runner loads it: the next chunks are byte-identical."""
    source = EnvBatchSource(**GRID, autoreset="same_step", env_options=SHORT)
    whole = source.runner()
    expected = [chunk_arrays(whole.rollout(8), k) for k in range(6)]
    first = source.runner()
    for _ in range(3):
        first.rollout(8)
    second = source.runner()
    second.load_state_dict(first.state_dict())
    for k in range(3, 6):
        got = chunk_arrays(second.rollout(8), k)
        assert got.keys() == expected[k].keys()
        for key, value in got.items():
            assert value.tobytes() == expected[k][key].tobytes(), (k, key)


@pytest.mark.parametrize("autoreset", ["next_step", "same_step", "disabled", "pool"])
def test_a_runner_that_went_on_loads_an_earlier_state(autoreset: str) -> None:
    """Not only a fresh runner: one that ran past the state goes back to it exactly."""
    source = EnvBatchSource(**GRID, autoreset=autoreset, env_options=SHORT)
    whole = source.runner()
    expected = [chunk_arrays(whole.rollout(8), k) for k in range(6)]
    runner = source.runner()
    for _ in range(2):
        runner.rollout(8)
    state = runner.state_dict()
    for _ in range(3):
        runner.rollout(8)
    runner.load_state_dict(state)
    for k in range(2, 6):
        got = chunk_arrays(runner.rollout(8), k)
        assert all(np.array_equal(v, expected[k][key]) for key, v in got.items()), k


def test_a_state_of_another_run_is_refused() -> None:
    state = EnvBatchSource(**GRID).runner().state_dict()
    other = EnvBatchSource(**{**GRID, "num_envs": 3}).runner()
    with pytest.raises(DataError, match="num_envs 6"):
        other.load_state_dict(state)
    bad = {**state, "episode": np.zeros(2, np.int64)}
    fresh = EnvBatchSource(**GRID).runner()
    with pytest.raises(DataError, match="episode has shape"):
        fresh.load_state_dict(bad)


def test_a_started_state_of_an_in_place_env_is_refused() -> None:
    runner = EnvRunner(InPlaceEnv(), num_envs=2, seed=1)
    runner.rollout(3)
    state = runner.state_dict()
    fresh = EnvRunner(InPlaceEnv(), num_envs=2, seed=1)
    with pytest.raises(DataError, match="keeps its state inside"):
        fresh.load_state_dict(state)
    assert fresh.t == 0  # nothing loaded halfway


# ------------------------------------------------------------ writing and reading


@pytest.mark.parametrize("writer", ["npz", "pt", "h5"])
def test_files_read_back_with_plain_numpy_torch_h5py(tmp_path: Path, writer: str) -> None:
    library = {"pt": "torch", "h5": "h5py"}.get(writer)
    if library is not None:
        pytest.importorskip(library, reason=f"{library} is not installed")
    config = {**GRID, "autoreset": "same_step", "env_options": SHORT}
    report = write_rollouts(config, tmp_path, chunks=3, writer=writer)
    assert report["complete"]
    assert report["written"] == 3
    assert report["episodes"] > 0
    expected = list(EnvBatchSource(**config, max_steps=24).rollouts(numpy=True))
    names = sorted(p.name for p in tmp_path.glob("rollout-*"))
    assert names == [f"rollout-{k:06d}.{writer}" for k in range(3)]
    for k, (name, rollout) in enumerate(zip(names, expected, strict=True)):
        path = tmp_path / name
        if writer == "npz":
            with np.load(path, allow_pickle=False) as f:
                data = {key: f[key] for key in f.files}
        elif writer == "pt":
            import torch

            data = {key: v.numpy() for key, v in torch.load(path, weights_only=True).items()}
        else:
            import h5py

            with h5py.File(path, "r") as f:
                data = {key: f["batch"][key][()] for key in f["batch"]}
        for key in ("obs", "action", "reward", "terminated", "episode_id", "final_obs"):
            assert np.array_equal(data[key], rollout[key]), key
            assert data[key].dtype == np.asarray(rollout[key]).dtype
        assert np.array_equal(data["episodes.return"], rollout.episodes["return"])
        assert int(data["chunk"]) == k
        assert int(data["start"]) == 8 * k
    reader = read_rollouts(tmp_path)
    assert len(reader) == 3
    for k, chunk in enumerate(reader):
        assert np.array_equal(chunk["obs"], expected[k]["obs"])
    summary = reader.summary()
    episodes = sum(int(r.episodes["return"].size) for r in expected)
    assert summary["episodes"] == episodes
    returns = np.concatenate([r.episodes["return"] for r in expected])
    assert summary["mean_return"] == pytest.approx(float(returns.mean()))
    assert summary["env_steps"] == 3 * 8 * 6


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**31),
    num_envs=st.integers(1, 5),
    rollout_len=st.integers(1, 9),
    chunks=st.integers(1, 5),
    stop=st.integers(0, 4),
    autoreset=st.sampled_from(["next_step", "same_step", "disabled", "pool"]),
)
def test_same_seed_gives_byte_identical_files_whatever_the_stops(
    tmp_path_factory: pytest.TempPathFactory,
    seed: int,
    num_envs: int,
    rollout_len: int,
    chunks: int,
    stop: int,
    autoreset: str,
) -> None:
    config = {
        "env": "grid",
        "env_options": {"max_episode_steps": 4},
        "num_envs": num_envs,
        "rollout_len": rollout_len,
        "seed": seed,
        "autoreset": autoreset,
    }
    a, b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    write_rollouts(config, a, chunks=chunks)

    def interrupt(k: int) -> None:
        if k == min(stop, chunks - 1):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_rollouts(config, b, chunks=chunks, on_chunk=interrupt, flush_seconds=0.0)
    report = write_rollouts(config, b, chunks=chunks, resume=True)
    assert report["complete"]
    assert report["resumed_from"] == "state"  # stopped after a chunk was recorded
    assert file_bytes(a) == file_bytes(b)
    assert digests(a) == digests(b)


def test_more_chunks_on_resume_extend_the_run(tmp_path: Path) -> None:
    write_rollouts(GRID, tmp_path / "a", chunks=5)
    write_rollouts(GRID, tmp_path / "b", chunks=2)
    report = write_rollouts(GRID, tmp_path / "b", chunks=5, resume=True)
    assert report["kept"] == 2
    assert report["written"] == 3
    assert report["resumed_from"] == "state"
    assert file_bytes(tmp_path / "a") == file_bytes(tmp_path / "b")
    # only the last chunk's runner state is kept
    assert sorted(p.name for p in (tmp_path / "b").glob("state-*")) == ["state-000004.npz"]
    with pytest.raises(ConfigError, match="holds 5 chunks"):
        write_rollouts(GRID, tmp_path / "b", chunks=3, resume=True)


def test_an_env_without_a_saved_state_is_computed_again_on_resume(tmp_path: Path) -> None:
    config = {**GRID, "env": "tests.test_env_files:make_in_place", "autoreset": "same_step"}
    write_rollouts(config, tmp_path / "a", chunks=4)
    assert not list((tmp_path / "a").glob("state-*"))

    def interrupt(k: int) -> None:
        if k == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_rollouts(config, tmp_path / "b", chunks=4, on_chunk=interrupt)
    report = write_rollouts(config, tmp_path / "b", chunks=4, resume=True)
    assert report["resumed_from"] == "replay"
    assert report["kept"] == 2
    assert file_bytes(tmp_path / "a") == file_bytes(tmp_path / "b")


@pytest.mark.parametrize("autoreset", ["same_step", "next_step"])
def test_jax_runs_resume_from_the_saved_runner_state(tmp_path: Path, autoreset: str) -> None:
    pytest.importorskip("jax")
    config = {
        **GRID,
        "num_envs": 3,
        "rollout_len": 4,
        "array_backend": "jax",
        "autoreset": autoreset,
        "env_options": SHORT,
    }
    write_rollouts(config, tmp_path / "a", chunks=4)
    assert [p.name for p in (tmp_path / "a").glob("state-*")] == ["state-000003.npz"]

    def interrupt(k: int) -> None:
        if k == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_rollouts(config, tmp_path / "b", chunks=4, on_chunk=interrupt)
    report = write_rollouts(config, tmp_path / "b", chunks=4, resume=True)
    assert report["resumed_from"] == "state"
    assert report["kept"] == 2
    assert report["written"] == 2
    assert digests(tmp_path / "a") == digests(tmp_path / "b")


@pytest.mark.parametrize("autoreset", ["same_step", "pool", "next_step", "disabled"])
def test_jax_runner_resumes_from_its_state(autoreset: str) -> None:
    pytest.importorskip("jax")

    def foreign(state: dict[str, Any]) -> dict[str, Any]:
        return {**state, "num_envs": state["num_envs"] + 1}

    check_stateful(
        lambda: Chunks("jax", autoreset=autoreset, env_options=SHORT, num_envs=3),
        cuts=(0, 2),
        tail=2,
        json_state=False,
        foreign=foreign,
    )


def test_jax_runner_refuses_a_numpy_runner_state_and_bad_counters() -> None:
    pytest.importorskip("jax")
    jax_runner = EnvBatchSource(**GRID, array_backend="jax").runner()
    numpy_state = EnvBatchSource(**GRID).runner().state_dict()
    with pytest.raises(DataError, match=r"not a laden\.jax_runner state"):
        jax_runner.load_state_dict(numpy_state)
    state = jax_runner.state_dict()
    with pytest.raises(DataError, match=r"episode has shape \(2,\), want \(6,\)"):
        jax_runner.load_state_dict({**state, "episode": np.zeros(2)})
    with pytest.raises(DataError, match="seed 7"):
        jax_runner.load_state_dict({**state, "seed": 8})


def test_a_jax_state_taken_is_a_copy() -> None:
    """The state is host numpy copies: going on, or changing the copy, changes neither."""
    pytest.importorskip("jax")
    runner = EnvBatchSource(**GRID, array_backend="jax", env_options=SHORT).runner()
    runner.rollout(4)
    state = runner.state_dict()
    grid = state["state"]["grid"].copy()
    runner.rollout(4)
    assert np.array_equal(state["state"]["grid"], grid)
    other = EnvBatchSource(**GRID, array_backend="jax", env_options=SHORT).runner()
    other.load_state_dict(state)
    state["state"]["grid"][:] = 0
    state["obs"][:] = 0
    got = other.state_dict()
    assert np.array_equal(got["state"]["grid"], grid)
    assert got["obs"].any()


def test_resume_with_other_settings_is_refused(tmp_path: Path) -> None:
    write_rollouts(GRID, tmp_path, chunks=1)
    with pytest.raises(ConfigError, match=r"seed 7; this run has .*seed 8"):
        write_rollouts({**GRID, "seed": 8}, tmp_path, chunks=1, resume=True)
    if importlib.util.find_spec("h5py") is not None:  # another writer (the h5 extra)
        with pytest.raises(ConfigError, match="writer"):
            write_rollouts(GRID, tmp_path, chunks=1, writer="h5", resume=True)
    with pytest.raises(ConfigError, match="already holds a rollout file directory"):
        write_rollouts(GRID, tmp_path, chunks=1)
    report = write_rollouts({**GRID, "seed": 8}, tmp_path, chunks=2, force=True)
    assert report["written"] == 2


def test_a_folder_laden_did_not_write_is_left_alone(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty"):
        write_rollouts(GRID, tmp_path, chunks=1, force=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_a_users_files_beside_a_run_are_never_removed(tmp_path: Path) -> None:
    write_rollouts(GRID, tmp_path, chunks=2)
    mine = {"state-my-checkpoint.npz": b"mine", "rollout-notes.txt": b"notes"}
    for name, data in mine.items():
        (tmp_path / name).write_bytes(data)
    report = write_rollouts(GRID, tmp_path, chunks=3, resume=True)
    assert report["resumed_from"] == "state"
    before = every_file(tmp_path)
    with pytest.raises(ConfigError, match="did not write"):  # refused before anything goes
        write_rollouts(GRID, tmp_path, chunks=3, force=True)
    assert every_file(tmp_path) == before
    for name, data in mine.items():
        assert (tmp_path / name).read_bytes() == data


def test_resume_and_force_together_are_refused_before_anything_changes(tmp_path: Path) -> None:
    write_rollouts(GRID, tmp_path, chunks=2)
    before = every_file(tmp_path)
    with pytest.raises(ConfigError, match="pass one"):
        write_rollouts(GRID, tmp_path, chunks=3, resume=True, force=True)
    assert every_file(tmp_path) == before
    assert write_rollouts(GRID, tmp_path, chunks=3, resume=True)["resumed_from"] == "state"


@pytest.mark.parametrize("damage", ["flip", "truncate", "swap"])
def test_a_damaged_chunk_is_named_never_served_and_rewritten_on_resume(
    tmp_path: Path, damage: str
) -> None:
    write_rollouts(GRID, tmp_path / "a", chunks=4)
    out = tmp_path / "b"
    write_rollouts(GRID, out, chunks=4)
    victim = out / "rollout-000002.npz"
    data = bytearray(victim.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
        victim.write_bytes(bytes(data))
    elif damage == "truncate":
        victim.write_bytes(bytes(data[:-10]))
    else:
        victim.write_bytes((out / "rollout-000001.npz").read_bytes())
    reader = read_rollouts(out)
    assert np.array_equal(reader[1]["obs"], read_rollouts(tmp_path / "a")[1]["obs"])
    with pytest.raises(DataError, match=r"rollout-000002\.npz"):
        list(reader)
    report = write_rollouts(GRID, out, chunks=4, resume=True)
    assert report["damaged_files"].keys() == {"rollout-000002.npz"}
    assert report["written"] == 1
    assert report["resumed_from"] == "replay"
    assert file_bytes(tmp_path / "a") == file_bytes(out)
    assert len(list(read_rollouts(out))) == 4


def test_an_unfinished_run_is_not_read_unless_asked(tmp_path: Path) -> None:
    def interrupt(k: int) -> None:
        if k == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_rollouts(GRID, tmp_path, chunks=4, on_chunk=interrupt)
    with pytest.raises(DataError, match="did not finish"):
        read_rollouts(tmp_path)
    assert len(read_rollouts(tmp_path, partial=True)) == 2


# ------------------------------------------------------------ kill -9


_CHILD = """
import sys
from laden.stream.envs import write_rollouts
config = {"env": "grid", "num_envs": 8, "rollout_len": 16, "seed": 3, "autoreset": "same_step",
          "env_options": {"max_episode_steps": 6}}
write_rollouts(config, sys.argv[1], chunks=int(sys.argv[2]), flush_seconds=float(sys.argv[3]),
               resume=True)
"""
KILL_CHUNKS = 150


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("whole")
    subprocess.run(
        [sys.executable, "-c", _CHILD, str(out), str(KILL_CHUNKS), "2"], check=True, timeout=120
    )
    return out


@pytest.mark.parametrize(("after", "flush"), [(2, "0"), (40, "0.01"), (110, "2")])
def test_kill_9_mid_run_then_resume_gives_the_same_files(
    tmp_path: Path, uninterrupted: Path, after: int, flush: str
) -> None:
    """A real process killed with SIGKILL once ``after`` chunk files exist (any moment of
    writing: a state file, a chunk file, the manifest); ``--resume`` finishes identically."""
    out = tmp_path / "run"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(out), str(KILL_CHUNKS), flush])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:
            if out.is_dir() and len(list(out.glob("rollout-*"))) >= after:
                break
            time.sleep(0.002)
        child.send_signal(signal.SIGKILL)  # a no-op if it had ended (never another pid)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL, "the run ended before it was killed"
    subprocess.run(
        [sys.executable, "-c", _CHILD, str(out), str(KILL_CHUNKS), flush], check=True, timeout=120
    )
    assert digests(out) == digests(uninterrupted)
    assert file_bytes(out) == file_bytes(uninterrupted)
    assert json.loads((out / "manifest.json").read_text())["complete"] is True


def test_ctrl_c_in_the_cli_leaves_a_resumable_run(tmp_path: Path, uninterrupted: Path) -> None:
    """SIGINT to ``laden envs collect``: exit 130, one line saying how to resume; the
    resumed run's files are the uninterrupted run's (the same settings as ``_CHILD``)."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "laden", "envs", "collect", "grid", "-o", str(out)]
    args += ["--num-envs", "8", "--rollout-len", "16", "--seed", "3", "--autoreset", "same_step"]
    args += ["-E", "max_episode_steps=6", "--chunks", str(KILL_CHUNKS)]
    child = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and child.poll() is None:
            if out.is_dir() and len(list(out.glob("rollout-*"))) >= 20:
                break
            time.sleep(0.002)
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130, err
    assert "Traceback" not in err
    assert f"Error: interrupted; the files written so far are kept in {out}" in err
    assert "rerun with --resume" in err
    done = subprocess.run(
        [*args, "--resume", "--json"], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    # every chunk recorded is kept (the one being written at the signal may be written again)
    assert json.loads(done.stdout)["kept"] >= 19
    assert digests(out) == digests(uninterrupted)
    assert file_bytes(out) == file_bytes(uninterrupted)


# ------------------------------------------------------------ the CLI


def test_cli_collect_writes_resumes_and_reports(tmp_path: Path, kernel: laden.Kernel) -> None:
    out = tmp_path / "r"
    args = ["envs", "collect", "grid", "-o", out, "--num-envs", 4, "--rollout-len", 8]
    writer = "h5" if importlib.util.find_spec("h5py") is not None else "npz"
    result = run_cli(kernel, *args, "--chunks", 2, "--writer", writer, code=0)
    assert "wrote 2 rollout files" in result.output
    result = run_cli(kernel, *args, "--chunks", 3, "--writer", writer, "--resume", "--json", code=0)
    report = json.loads(result.output)
    assert report["kept"] == 2
    assert report["written"] == 1
    assert report["complete"] is True
    assert len(read_rollouts(out)) == 3
    result = run_cli(kernel, *args, "--chunks", 3, "--seed", 1, "--resume", code=2)
    assert "cannot resume" in result.output
    assert "seed" in result.output
