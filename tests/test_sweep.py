"""Sweeps: files, points, seeds, generators, the resumable run, the dataset reader, the CLI."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import laden
from laden.errors import ConfigError
from laden.plugins.generators.gabor import GaborGenerator
from laden.plugins.generators.gaussian import GaussianGenerator
from laden.plugins.generators.moving_gaussian import MovingGaussianGenerator
from laden.sweep import (
    dry_run,
    example_path,
    expand,
    load_sweep,
    parse_sweep,
    run_sweep,
)
from laden.sweep.points import _key, _words
from laden.testing import check_generator, run_cli
from tests import sweep_helpers

ROOT = Path(__file__).resolve().parents[1]


def make_kernel() -> laden.Kernel:
    kernel = laden.Kernel(autoload=False)
    kernel.register(sweep_helpers, "sweep_helpers")
    return kernel


@pytest.fixture
def kernel() -> laden.Kernel:
    return make_kernel()


def flaky_spec(tmp_path: Path, *, writer: str = "npz", ppf: int = 4, delay: float = 0.0) -> Path:
    path = tmp_path / "sweep.yaml"
    path.write_text(
        textwrap.dedent(
            f"""
            metadata: {{name: flaky_test, version: "1"}}
            base: {{delay: {delay}}}
            sweep:
              points:
                - type: flaky_sweep
                  parameters: {{x: [0, 1, 2, 3], y: {{start: 0.0, stop: 1.0, num: 3}}}}
                  repetitions: 2
                  base_seed: 7
            output: {{writer: {writer}, points_per_file: {ppf}}}
            executor: {{name: local, workers: 0}}
            """
        )
    )
    return path


def digests(directory: Path) -> dict[str, str]:
    return {
        p.name: hashlib.blake2b(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.name.startswith("part-") or p.name == "index.json"
    }


# ------------------------------------------------------------------ generators


@pytest.mark.parametrize(
    ("cls", "params"),
    [
        (GaussianGenerator, {"amplitude": 2.0, "sigma": 0.5, "grid_size": 16}),
        (GaborGenerator, {"frequency": 2.0, "orientation": 45.0, "grid_size": 16}),
        (MovingGaussianGenerator, {"velocity": 2.0, "direction": 90.0, "frames": 5}),
    ],
)
def test_builtin_generators_pass_check_generator(cls: type, params: dict[str, Any]) -> None:
    check_generator(cls, params=params)
    check_generator(cls, params=params, dtype="float64")


def test_generators_are_registered_and_shaped() -> None:
    kernel = laden.Kernel(autoload=False)
    assert {"gaussian", "gabor", "moving_gaussian"} <= set(kernel.registry("generator").names())
    out = MovingGaussianGenerator().generate({"frames": 7, "grid_size": 8}, 3)
    assert out["stimulus"].shape == (7, 8, 8)
    assert out["trajectory"].shape == (7, 2)
    blob = GaussianGenerator().generate({"noise": 0.0, "amplitude": 5.0, "grid_size": 9}, 0)
    assert blob["stimulus"].max() == pytest.approx(5.0)
    assert blob["stimulus"][4, 4] == blob["stimulus"].max()


# ----------------------------------------------------------- points and seeds


def test_example_has_the_seeds_75_points_in_documented_order(kernel: laden.Kernel) -> None:
    points = expand(load_sweep(example_path(), kernel=kernel))
    assert len(points) == 75
    assert [points[i]["id"] for i in range(4)] == [
        "gaussian_a10.0_s0.3_rep0",
        "gaussian_a10.0_s0.3_rep1",
        "gaussian_a10.0_s0.3_rep2",
        "gaussian_a10.0_s0.5_rep0",
    ]
    assert len(set(points.ids.tolist())) == 75
    assert len(set(points.seeds.tolist())) == 75


def test_seeds_are_numpys_seed_sequence(kernel: laden.Kernel) -> None:
    spec = load_sweep(example_path(), kernel=kernel)
    points = expand(spec)
    block = spec.blocks[0]
    for i in (0, 1, 17, 74):
        p = points[i]
        entropy = [*_words(block.base_seed), *_key("block", block.name, block.generator)]
        for name in sorted(block.parameters):
            entropy += _key(name, p["parameters"][name])
        entropy.append(p["repetition"])
        expected = np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]
        assert p["seed"] == int(expected)


def _spec(blocks: list[dict[str, Any]], kernel: laden.Kernel) -> Any:
    return parse_sweep({"sweep": {"stimuli": blocks}}, kernel=kernel)


@settings(max_examples=25, deadline=None)
@given(
    amplitudes=st.lists(st.integers(0, 50), min_size=1, max_size=4, unique=True),
    extra=st.integers(51, 100),
    reps=st.integers(1, 3),
    more_reps=st.integers(0, 2),
    seed=st.integers(0, 2**40),
    add_block=st.booleans(),
)
def test_adding_a_value_block_or_repetition_keeps_existing_seeds(
    amplitudes: list[int], extra: int, reps: int, more_reps: int, seed: int, add_block: bool
) -> None:
    kernel = laden.Kernel(autoload=False)
    block = {
        "type": "gaussian",
        "parameters": {"amplitude": amplitudes, "sigma": [0.5, 1.0]},
        "repetitions": reps,
        "base_seed": seed,
    }
    before = expand(_spec([block], kernel))
    grown = dict(block, parameters={"amplitude": [extra, *amplitudes], "sigma": [1.0, 0.5, 2.0]})
    grown["repetitions"] = reps + more_reps
    blocks = [{"type": "gabor", "parameters": {"frequency": [1.0, 2.0]}}] if add_block else []
    after = expand(_spec([*blocks, grown], kernel))
    seeds_after = dict(zip(after.ids.tolist(), after.seeds.tolist(), strict=True))
    for pid, s in zip(before.ids.tolist(), before.seeds.tolist(), strict=True):
        assert seeds_after[pid] == s


def test_seed_is_not_seed_plus_index(kernel: laden.Kernel) -> None:
    one = expand(
        _spec([{"type": "gaussian", "base_seed": 1, "parameters": {"sigma": [1.0]}}], kernel)
    )
    zero = expand(
        _spec(
            [
                {
                    "type": "gaussian",
                    "base_seed": 0,
                    "parameters": {"sigma": [1.0]},
                    "repetitions": 2,
                }
            ],
            kernel,
        )
    )
    assert int(one.seeds[0]) not in set(zero.seeds.tolist())


def test_a_million_point_dry_expansion_is_fast(kernel: laden.Kernel) -> None:
    spec = _spec(
        [
            {
                "type": "gaussian",
                "parameters": {"amplitude": list(range(100)), "sigma": list(range(100))},
                "repetitions": 100,
            }
        ],
        kernel,
    )
    points = expand(spec)
    assert len(points) == 1_000_000
    assert len(np.unique(points.seeds)) == 1_000_000


# --------------------------------------------------------------- strict files


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (
            "sweep: {stimuli: [{type: gaussian, parameters: {sigma: [1]}}]}\nouput: {}\n",
            "ouput: unknown key (did you mean 'output'?)",
        ),
        (
            "sweep: {stimuli: [{type: gaussian, parameters: {sigma: []}}]}\n",
            "sweep.stimuli[0].parameters.sigma: an empty list",
        ),
        (
            "sweep: {stimuli: [{type: gausian_sweep}]}\n",
            "sweep.stimuli[0].type: unknown generator 'gausian'",
        ),
        (
            "sweep: {stimuli: [{type: gaussian, parameters: {sigmaa: [1]}}]}\n",
            "sweep.stimuli[0].parameters.sigmaa: gaussian takes no parameter 'sigmaa' "
            "(did you mean 'sigma'?)",
        ),
        (
            "sweep: {stimuli: [{type: gaussian, repetitons: 2}]}\n",
            "sweep.stimuli[0].repetitons: unknown key (did you mean 'repetitions'?)",
        ),
        (
            "sweep: {stimuli: [{type: gaussian, repetitions: 0}]}\n",
            "sweep.stimuli[0].repetitions: expected an integer >= 1",
        ),
        (
            "sweep: {stimuli: [{type: gaussian}, {type: gaussian}]}\n",
            "sweep.stimuli[1].name: block 0 has the name 'gaussian' too",
        ),
        (
            "sweep: {stimuli: [{type: gaussian}]}\noutput: {writer: parquet}\n",
            "output.writer: unknown writer 'parquet'",
        ),
        (
            "base: {colour: 1}\nsweep: {stimuli: [{type: gaussian}]}\n",
            "base.colour: gaussian takes no parameter 'colour'",
        ),
        (
            "sweep: {stimuli: [{type: gaussian, parameters: {sigma: {start: 0, stop: 1}}}]}\n",
            "sweep.stimuli[0].parameters.sigma: expected a list of values",
        ),
        (
            "sweep: {stimuli: [{type: gaussian}]}\nexecutor: {name: local, workers: -1}\n",
            "executor.workers",
        ),
    ],
)
def test_strict_sweep_files_name_file_and_key_path(
    tmp_path: Path, kernel: laden.Kernel, text: str, where: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_sweep(path, kernel=kernel)
    assert str(info.value).startswith(f"{path}: "), str(info.value)
    assert where in str(info.value)


def test_toml_sweep_files_and_value_forms(tmp_path: Path, kernel: laden.Kernel) -> None:
    path = tmp_path / "s.toml"
    path.write_text(
        '[[sweep.stimuli]]\ntype = "gabor"\nrepetitions = 2\n'
        "[sweep.stimuli.parameters]\nfrequency = {start = 1.0, stop = 2.0, num = 3}\n"
        "orientation = {values = [0, 90]}\nphase = 0.5\n"
    )
    spec = load_sweep(path, kernel=kernel)
    assert spec.total == 3 * 2 * 1 * 2
    assert spec.blocks[0].parameters["frequency"] == (1.0, 1.5, 2.0)
    assert expand(spec)[0]["id"] == "gabor_f1.0_o0_p0.5_rep0"


# ----------------------------------------------------------------- the run


@pytest.mark.parametrize("writer", ["npz", "pt", "h5"])
def test_files_read_back_with_the_plain_libraries(
    tmp_path: Path, kernel: laden.Kernel, writer: str
) -> None:
    needs = {"pt": "torch", "h5": "h5py"}.get(writer)
    if needs:
        pytest.importorskip(needs, reason=f"the {writer} writer needs an extra")
    spec = load_sweep(example_path(), kernel=kernel)
    import attrs

    spec = attrs.evolve(spec, writer=writer, points_per_file=30)
    result = run_sweep(
        spec, kernel=kernel, output=tmp_path / "out", executor={"name": "local", "workers": 0}
    )
    assert result.ok == 75
    assert result.files == 3
    assert result.complete
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    entry = index["points"]["gaussian_a20.0_s0.8_rep1"]
    assert entry["parameters"]["sigma"] == 0.8
    assert entry["status"] == "ok"
    expected = GaussianGenerator().generate(entry["parameters"], entry["seed"])["stimulus"]
    path = tmp_path / "out" / entry["file"]
    if writer == "npz":
        with np.load(path, allow_pickle=False) as data:
            got = data["gaussian_a20.0_s0.8_rep1/stimulus"]
    elif writer == "pt":
        import torch

        got = torch.load(path, weights_only=True)["gaussian_a20.0_s0.8_rep1/stimulus"].numpy()
    else:
        import h5py

        with h5py.File(path, "r") as f:
            assert f["metadata"].attrs["name"] == "my_tactile_dataset"
            assert f["metadata"].attrs["num_points"] == 30
            group = f["points/gaussian_a20.0_s0.8_rep1"]
            assert group.attrs["sigma"] == 0.8
            assert group.attrs["amplitude"] == 20.0
            assert int(group.attrs["seed"]) == entry["seed"]
            got = group["stimulus"][()]
    np.testing.assert_array_equal(got, expected)


def test_runs_are_deterministic_across_workers(tmp_path: Path, kernel: laden.Kernel) -> None:
    spec = load_sweep(flaky_spec(tmp_path), kernel=kernel)
    run_sweep(spec, kernel=kernel, output=tmp_path / "a", executor={"name": "local", "workers": 0})
    run_sweep(spec, kernel=kernel, output=tmp_path / "b", executor={"name": "local", "workers": 2})
    assert digests(tmp_path / "a") == digests(tmp_path / "b")
    assert len(digests(tmp_path / "a")) == 7  # 24 points / 4 per file + index


def test_failures_are_recorded_the_run_goes_on_and_retry_reruns_only_them(
    tmp_path: Path, kernel: laden.Kernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = load_sweep(flaky_spec(tmp_path), kernel=kernel)
    out = tmp_path / "out"
    monkeypatch.setenv("LADEN_TEST_FAIL", "1")
    result = run_sweep(spec, kernel=kernel, output=out, executor={"name": "local", "workers": 0})
    assert len(result.failed) == 6
    assert result.ok == 18
    assert not result.complete
    assert all(pid.startswith("flaky_x2_") for pid in result.failed)
    manifest = json.loads((out / "manifest.json").read_text())
    failed = manifest["points"]["flaky_x2_y0.0_rep0"]
    assert failed["status"] == "failed"
    assert "fails on purpose" in failed["error"]
    assert "RuntimeError" in failed["traceback"]
    assert "sweep_helpers.py" in failed["traceback"]
    index = json.loads((out / "index.json").read_text())
    assert index["points"]["flaky_x2_y0.0_rep0"]["status"] == "failed"
    # a plain resume keeps them failed and runs nothing
    again = run_sweep(
        spec, kernel=kernel, output=out, resume=True, executor={"name": "local", "workers": 0}
    )
    assert again.ran == 0
    assert len(again.failed) == 6
    monkeypatch.delenv("LADEN_TEST_FAIL")
    retried = run_sweep(
        spec, kernel=kernel, output=out, retry_failed=True, executor={"name": "local", "workers": 0}
    )
    assert retried.ran == 6
    assert retried.failed == {}
    assert retried.complete
    clean = tmp_path / "clean"
    run_sweep(spec, kernel=kernel, output=clean, executor={"name": "local", "workers": 0})
    assert digests(out) == digests(clean)


def test_cli_exit_code_counts_failures(
    tmp_path: Path, kernel: laden.Kernel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LADEN_TEST_FAIL", "1")
    path = flaky_spec(tmp_path)
    result = run_cli(kernel, "sweep", path, "-o", tmp_path / "o", "--json", code=1)
    report = json.loads(result.stdout)
    assert len(report["failed"]) == 6
    assert report["ok"] == 18
    monkeypatch.delenv("LADEN_TEST_FAIL")
    result = run_cli(kernel, "sweep", path, "-o", tmp_path / "o", "--retry-failed", code=0)
    assert "24/24 points ok, 0 failed, 6 run now" in result.output


def test_an_existing_output_needs_resume_or_force(tmp_path: Path, kernel: laden.Kernel) -> None:
    path = flaky_spec(tmp_path)
    run_cli(kernel, "sweep", path, "-o", tmp_path / "o", code=0)
    result = run_cli(kernel, "sweep", path, "-o", tmp_path / "o", code=2)
    assert "--resume" in result.output
    run_cli(kernel, "sweep", path, "-o", tmp_path / "o", "--force", code=0)
    (tmp_path / "o" / "notes.txt").write_text("mine")  # a stranger among the sweep's files
    before = {p.name: p.read_bytes() for p in (tmp_path / "o").iterdir()}
    result = run_cli(kernel, "sweep", path, "-o", tmp_path / "o", "--force", code=2)
    assert "did not write (notes.txt)" in result.output
    assert {p.name: p.read_bytes() for p in (tmp_path / "o").iterdir()} == before
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    result = run_cli(kernel, "sweep", path, "-o", tmp_path / "mine", "--force", code=2)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"


KILL_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {root!r})
import laden
from laden.sweep import load_sweep, run_sweep
from tests import sweep_helpers
kernel = laden.Kernel(autoload=False)
kernel.register(sweep_helpers, "sweep_helpers")
spec = load_sweep({spec!r}, kernel=kernel)
def on_chunk(chunk):
    if chunk == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)
if __name__ == "__main__":  # spawned workers import this file too
    run_sweep(spec, kernel=kernel, output={out!r}, resume=len(sys.argv) > 2,
              executor={{"name": "local", "workers": 2}}, on_chunk=on_chunk)
"""


@pytest.mark.parametrize("kill_after", [0, 3])
def test_kill_9_then_resume_gives_the_same_files(
    tmp_path: Path, kernel: laden.Kernel, kill_after: int
) -> None:
    spec_path = flaky_spec(tmp_path, ppf=3)
    out = tmp_path / "killed"
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT.format(root=str(ROOT), spec=str(spec_path), out=str(out)))
    env = {k: v for k, v in os.environ.items() if k != "LADEN_TEST_FAIL"}
    first = subprocess.run([sys.executable, str(script), str(kill_after)], env=env, timeout=120)
    assert first.returncode == -signal.SIGKILL
    assert (out / "manifest.json").exists()
    done = subprocess.run([sys.executable, str(script), "-1", "resume"], env=env, timeout=120)
    assert done.returncode == 0
    spec = load_sweep(spec_path, kernel=kernel)
    run_sweep(
        spec, kernel=kernel, output=tmp_path / "clean", executor={"name": "local", "workers": 0}
    )
    assert digests(out) == digests(tmp_path / "clean")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"]
    assert len(manifest["points"]) == 24
    assert not list(out.glob(".*.tmp"))


def test_a_damaged_file_is_rewritten_on_resume(tmp_path: Path, kernel: laden.Kernel) -> None:
    spec = load_sweep(flaky_spec(tmp_path), kernel=kernel)
    out = tmp_path / "out"
    run_sweep(spec, kernel=kernel, output=out, executor={"name": "local", "workers": 0})
    before = digests(out)
    (out / "part-00002.npz").write_bytes(b"garbage")
    result = run_sweep(
        spec, kernel=kernel, output=out, resume=True, executor={"name": "local", "workers": 0}
    )
    assert result.ran == 4
    assert digests(out) == before


# ------------------------------------------------------------- dry run, CLI


def test_dry_run_shows_blocks_examples_layout_and_estimates(
    tmp_path: Path, kernel: laden.Kernel
) -> None:
    result = run_cli(kernel, "sweep", "--example", "--dry-run", code=0)
    assert "75 points" in result.output
    assert "5 amplitude x 5 sigma x 3 repetitions" in result.output
    assert "gaussian_a10.0_s0.3_rep0" in result.output
    assert "3 npz files" in result.output
    assert "estimate (from 3 points run here)" in result.output
    report = json.loads(run_cli(kernel, "sweep", "--example", "--dry-run", "--json", code=0).stdout)
    assert report["total"] == 75
    assert report["estimate"]["measured_points"] == 3
    assert report["estimate"]["bytes"] == 75 * 32 * 32 * 4
    assert not Path("batch_results").exists() or True
    spec = load_sweep(flaky_spec(tmp_path), kernel=kernel)
    dry = dry_run(spec, kernel=kernel, output=tmp_path / "never")
    assert dry["total"] == 24
    assert not (tmp_path / "never").exists()


def test_cli_mistakes_are_one_line(tmp_path: Path, kernel: laden.Kernel) -> None:
    result = run_cli(kernel, "sweep", code=2)
    assert "pass a sweep FILE or --example" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("sweep: {stimuli: [{type: nope}]}\n")
    result = run_cli(kernel, "sweep", bad, "--dry-run", code=2)
    assert f"{bad}: sweep.stimuli[0].type: unknown generator 'nope'" in result.output


# --------------------------------------------------------------- the dataset


def test_sweep_dataset_filters_and_feeds_a_dataloader(tmp_path: Path, kernel: laden.Kernel) -> None:
    torch = pytest.importorskip("torch", reason="the DataLoader half needs torch (extra torch)")
    spec = load_sweep(example_path(), kernel=kernel)
    run_sweep(
        spec, kernel=kernel, output=tmp_path / "out", executor={"name": "local", "workers": 0}
    )
    dataset = laden.SweepDataset(tmp_path / "out")
    assert len(dataset) == 75
    small = laden.SweepDataset(tmp_path / "out", sigma=[0.3, 0.5], amplitude=10.0, parameters=True)
    assert len(small) == 6
    assert {small[i]["parameters"]["sigma"] for i in range(6)} == {0.3, 0.5}
    assert len(dataset.filter(repetition=0)) == 25
    assert len(dataset.filter(sigma=lambda s: s > 0.9)) == 30
    point = small.point(0)
    expected = GaussianGenerator().generate(point["parameters"], point["seed"])["stimulus"]
    np.testing.assert_array_equal(small[0]["stimulus"], expected)
    loader = torch.utils.data.DataLoader(dataset, batch_size=16, shuffle=True)
    batches = list(loader)
    assert batches[0]["stimulus"].shape == (16, 32, 32)
    assert sum(len(b["stimulus"]) for b in batches) == 75
    with pytest.raises(IndexError):
        dataset[75]
