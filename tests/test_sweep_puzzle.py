"""The contrib ``puzzle`` generator: chuk-puzzles-gym episodes as sweep points; text fields."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

import laden
from laden.errors import ConfigError
from laden.sweep import example_path, expand, load_sweep
from laden.sweep.fields import read_text, text_field
from laden.sweep.files import SweepFiles
from laden.testing import check_generator, run_cli

ROOT = Path(__file__).resolve().parents[1]
HAVE_ARCADE = importlib.util.find_spec("chuk_puzzles_gym") is not None
needs_arcade = pytest.mark.skipif(not HAVE_ARCADE, reason="needs the arcade extra")
FIELDS = {
    "prompt": (np.uint8, 1),
    "solution": (np.uint8, 1),
    "trace": (np.uint8, 1),
    "optimal_steps": (np.int64, 0),
    "num_steps": (np.int64, 0),
    "game_seed": (np.int64, 0),
    "difficulty_profile": (np.float64, 1),
}


@pytest.fixture
def kernel() -> laden.Kernel:
    return laden.Kernel(autoload=False)


# ----------------------------------------------------------------- text fields


@given(st.text())
def test_text_fields_round_trip_any_text(text: str) -> None:
    field = text_field(text)
    assert field.dtype == np.uint8
    assert field.ndim == 1
    assert field.flags.writeable
    assert field.tobytes() == text.encode("utf-8")
    assert read_text(field) == text


def test_read_text_refuses_what_is_not_a_text_field() -> None:
    with pytest.raises(ValueError, match=r"1-D uint8 array, got int64 of shape \(3,\)"):
        read_text(np.arange(3))
    with pytest.raises(ValueError, match=r"got uint8 of shape \(2, 2\)"):
        read_text(np.zeros((2, 2), dtype=np.uint8))


@pytest.mark.parametrize("writer", ["npz", "pt", "h5"])
def test_text_round_trips_through_every_writer(
    writer: str, tmp_path: Path, kernel: laden.Kernel
) -> None:
    pytest.importorskip({"npz": "numpy", "pt": "torch", "h5": "h5py"}[writer])
    texts = ["", "plain ascii", "Nonogram ■ □ ✓ — ünïcödé\nsecond line\r\n", "x" * 10_000]
    entries = [
        (
            {"id": f"p{i}", "parameters": {"i": i}, "seed": i, "repetition": 0},
            {"text": text_field(t), "count": np.array(i, dtype=np.int64)},
        )
        for i, t in enumerate(texts)
    ]
    for record, _ in entries:
        record.update(block="b", generator="g")
    files = SweepFiles(writer, kernel=kernel, metadata={"name": "t"})
    path = tmp_path / f"part-00000.{writer}"
    files.write(path, entries)
    back = files.read(path)
    for i, text in enumerate(texts):
        assert read_text(back[f"p{i}"]["text"]) == text
        assert int(np.asarray(back[f"p{i}"]["count"])) == i


# ------------------------------------------------------------ the generator


def test_puzzle_is_listed_with_the_arcade_extra(kernel: laden.Kernel) -> None:
    entry = kernel.registry("generator").entry("puzzle")
    assert entry.extra == "arcade"
    assert entry.available == HAVE_ARCADE


def test_without_the_extra_the_error_names_it(tmp_path: Path) -> None:
    script = f"""
import sys
sys.modules["chuk_puzzles_gym"] = None  # as if the extra were not installed
import laden
from laden.cli import main
from laden.contrib.puzzle_generator import PuzzleGenerator
try:
    PuzzleGenerator().generate({{}}, 0)
except laden.ConfigError as exc:
    print("generate:", exc)
sys.argv = ["laden", "sweep", {example_path("puzzle")!r}, "--dry-run"]
main()
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120
    )
    assert out.returncode != 0
    assert out.stdout.startswith(
        "generate: the puzzle generator needs chuk-puzzles-gym, which is not installed; "
        'run: pip install "laden[arcade]"'
    )
    assert 'pip install "laden[arcade]"' in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


@needs_arcade
@pytest.mark.parametrize(
    "params",
    [
        {},
        {"game": "bridges", "difficulty": "hard"},
        {"game": "logic", "difficulty": "medium", "commands": True},
        {"game": "nonogram", "rules": False},
    ],
)
def test_puzzle_passes_check_generator(params: dict[str, Any]) -> None:
    from laden.contrib.puzzle_generator import PuzzleGenerator

    check_generator(PuzzleGenerator, params=params)


@needs_arcade
@pytest.mark.parametrize("game", ["sudoku", "bridges", "logic", "sokoban", "knapsack"])
def test_every_game_gives_the_same_fields(game: str) -> None:
    from laden.contrib.puzzle_generator import PuzzleGenerator

    out = PuzzleGenerator().generate({"game": game, "difficulty": "medium"}, 5)
    assert {k: (v.dtype, v.ndim) for k, v in out.items()} == FIELDS
    steps = json.loads(read_text(out["trace"]))
    assert len(steps) == int(out["num_steps"]) > 0
    assert [s["index"] for s in steps] == list(range(len(steps)))
    lines = read_text(out["solution"]).splitlines()
    assert [line.split(":")[0] for line in lines] == [f"Step {i + 1}" for i in range(len(steps))]
    assert 0 <= int(out["game_seed"]) < 2**31
    assert int(out["optimal_steps"]) > 0


def _exported(game: str, difficulty: str, seed: int) -> dict[str, Any]:
    """The record ``chuk-puzzles-export`` writes for one puzzle."""
    from chuk_puzzles_gym.export.dataset import DatasetExporter

    buffer = io.StringIO()
    exporter = DatasetExporter(buffer)
    asyncio.run(exporter.export_game(game, 1, difficulty, start_seed=seed))
    exporter.flush()
    record: dict[str, Any] = json.loads(buffer.getvalue())
    return record


@needs_arcade
@pytest.mark.parametrize(
    ("game", "difficulty", "seed"),
    [("sudoku", "easy", 0), ("kenken", "hard", 123), ("bridges", "medium", 2**31 - 1)],
)
def test_matches_chuk_puzzles_export_for_the_same_seed(
    game: str, difficulty: str, seed: int
) -> None:
    from laden.contrib.puzzle_generator import PuzzleGenerator

    out = PuzzleGenerator().generate({"game": game, "difficulty": difficulty, "game_seed": seed}, 9)
    record = _exported(game, difficulty, seed)
    assert int(out["game_seed"]) == seed
    assert read_text(out["prompt"]) == record["prompt"]
    assert int(out["optimal_steps"]) == record["optimal_steps"]
    # the same steps, with each step's position added
    theirs = record["trace"]
    ours = json.loads(read_text(out["trace"]))
    assert len(ours) == len(theirs) > 0
    assert [{k: s[k] for k in theirs[0]} for s in ours] == theirs
    assert all(s["position"] is not None for s in ours)


@needs_arcade
def test_prompt_parts_follow_rules_and_commands() -> None:
    from laden.contrib.puzzle_generator import PuzzleGenerator

    gen = PuzzleGenerator()
    point = {"game": "sudoku", "game_seed": 3}
    full = read_text(gen.generate(point, 0)["prompt"])
    bare = read_text(gen.generate({**point, "rules": False}, 0)["prompt"])
    both = read_text(gen.generate({**point, "commands": True}, 0)["prompt"])
    assert "SUDOKU RULES" in full
    assert "SUDOKU RULES" not in bare
    assert "place <row> <col> <num>" in both
    assert "place <row> <col> <num>" not in full
    grid = full.split("\n\n")[-1]
    assert bare.endswith(grid)
    assert both.endswith(grid)
    assert bare.startswith("Sudoku: ")


@needs_arcade
@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"game": "sudok"}, "parameters.game: unknown game 'sudok' (did you mean 'sudoku'?)"),
        ({"difficulty": "extreme"}, "parameters.difficulty: expected one of easy, medium, hard"),
        ({"game_seed": -1}, "parameters.game_seed: expected an integer in [0, 2**31), got -1"),
        ({"game_seed": 2**31}, "parameters.game_seed: expected an integer in [0, 2**31)"),
        ({"game_seed": True}, "parameters.game_seed: expected an integer"),
        ({"rules": "yes"}, "parameters.rules: expected true or false, got 'yes'"),
    ],
)
def test_bad_values_are_errors_naming_the_parameter(params: dict[str, Any], message: str) -> None:
    from laden.contrib.puzzle_generator import PuzzleGenerator

    with pytest.raises(ConfigError) as info:
        PuzzleGenerator().generate(params, 0)
    assert str(info.value).startswith(message)


@needs_arcade
def test_same_points_in_another_process_with_another_hash_seed() -> None:
    """Workers are other processes: nothing may depend on str hashing or global state."""
    code = """
import hashlib, sys
from laden.contrib.puzzle_generator import PuzzleGenerator
gen = PuzzleGenerator()
for game in ("sudoku", "binary", "hitori", "einstein", "fillomino", "minesweeper"):
    for seed in (1, 2**64 - 1):
        out = gen.generate({"game": game, "difficulty": "medium"}, seed)
        h = hashlib.sha256(b"".join(k.encode() + out[k].tobytes() for k in sorted(out)))
        print(game, seed, h.hexdigest())
"""
    runs = [
        subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
            env={**os.environ, "PYTHONHASHSEED": str(hash_seed)},
        ).stdout
        for hash_seed in (1, 4242)
    ]
    assert runs[0] == runs[1]
    assert len(runs[0].splitlines()) == 12


# ------------------------------------------------------------------- sweeps


@needs_arcade
def test_example_sweep_is_three_games_by_three_difficulties(kernel: laden.Kernel) -> None:
    spec = load_sweep(example_path("puzzle"), kernel=kernel)
    points = expand(spec)
    assert spec.total == len(points) == 90
    assert points[0]["id"] == "puzzle_gsudoku_deasy_rep0"
    assert points[89]["id"] == "puzzle_gbridges_dhard_rep9"
    combos = {(p["parameters"]["game"], p["parameters"]["difficulty"]) for p in points}
    assert len(combos) == 9
    assert len(set(points.seeds.tolist())) == 90


@needs_arcade
def test_a_typo_in_a_puzzle_sweep_names_file_and_key(tmp_path: Path, kernel: laden.Kernel) -> None:
    data = yaml.safe_load(Path(example_path("puzzle")).read_text())
    data["sweep"]["stimuli"][0]["parameters"]["gmae"] = ["sudoku"]
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(ConfigError) as info:
        load_sweep(path, kernel=kernel)
    assert str(info.value).startswith(
        f"{path}: sweep.stimuli[0].parameters.gmae: puzzle takes no parameter 'gmae' "
        "(did you mean 'game'?)"
    )


def _small_example(tmp_path: Path, writer: str, repetitions: int) -> Path:
    data = yaml.safe_load(Path(example_path("puzzle")).read_text())
    data["sweep"]["stimuli"][0]["repetitions"] = repetitions
    data["output"].update(writer=writer, points_per_file=4)
    path = tmp_path / f"puzzles-{writer}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _dataset_arrays(directory: Path) -> dict[str, dict[str, bytes]]:
    dataset = laden.SweepDataset(directory)
    return {
        dataset.point(i)["id"]: {k: np.asarray(v).tobytes() for k, v in dataset[i].items()}
        for i in range(len(dataset))
    }


@needs_arcade
def test_laden_sweep_runs_the_example_and_sweep_dataset_reads_it(
    tmp_path: Path, kernel: laden.Kernel
) -> None:
    out = tmp_path / "npz"
    result = run_cli(kernel, "sweep", example_path("puzzle"), "--output", out, "--json", code=0)
    report = json.loads(result.stdout)
    assert report["ok"] == 90
    assert not report["failed"]
    dataset = laden.SweepDataset(out, game="kenken", difficulty=["medium", "hard"], parameters=True)
    assert len(dataset) == 20
    item = dataset[3]
    assert item["parameters"]["game"] == "kenken"
    assert read_text(item["prompt"]).startswith("KenKen: ")
    from laden.contrib.puzzle_generator import PuzzleGenerator

    point = dataset.point(3)
    again = PuzzleGenerator().generate(point["parameters"], point["seed"])
    assert {k: np.asarray(v).tobytes() for k, v in again.items()} == {
        k: np.asarray(v).tobytes() for k, v in item.items() if k != "parameters"
    }
    # all 90 game seeds are different puzzles
    seeds = {int(laden.SweepDataset(out)[i]["game_seed"]) for i in range(90)}
    assert len(seeds) == 90


@needs_arcade
def test_npz_pt_and_h5_hold_the_same_episodes(tmp_path: Path, kernel: laden.Kernel) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("h5py")
    arrays = {}
    for writer in ("npz", "pt", "h5"):
        out = tmp_path / writer
        spec = _small_example(tmp_path, writer, 1)
        run_cli(kernel, "sweep", spec, "--output", out, "--workers", "0", code=0)
        arrays[writer] = _dataset_arrays(out)
        assert len(arrays[writer]) == 9
    assert arrays["npz"] == arrays["pt"] == arrays["h5"]
    # the plain libraries read them too
    import h5py
    import torch

    pid = "puzzle_gbridges_dmedium_rep0"
    with h5py.File(tmp_path / "h5" / "part-00001.h5", "r") as f:
        group = f["points"][pid]
        assert group.attrs["game"] == "bridges"
        assert group.attrs["difficulty"] == "medium"
        assert bytes(group["prompt"][()]).decode().startswith("Bridges: ")
    columns = torch.load(tmp_path / "pt" / "part-00001.pt", weights_only=True)
    assert read_text(columns[f"{pid}/prompt"]).startswith("Bridges: ")
    with np.load(tmp_path / "npz" / "part-00001.npz", allow_pickle=False) as data:
        assert int(data[f"{pid}/num_steps"]) == len(json.loads(read_text(data[f"{pid}/trace"])))


@needs_arcade
def test_rerunning_the_sweep_writes_the_same_bytes(tmp_path: Path, kernel: laden.Kernel) -> None:
    spec = _small_example(tmp_path, "npz", 1)
    digests = []
    for name, workers in (("a", "0"), ("b", "2")):
        run_cli(kernel, "sweep", spec, "--output", tmp_path / name, "--workers", workers, code=0)
        digests.append(
            {
                p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted((tmp_path / name).glob("part-*"))
            }
        )
    assert digests[0] == digests[1]
    assert len(digests[0]) == 3


def test_the_docs_show_the_bundled_example() -> None:
    page = (ROOT / "docs" / "sweeps.md").read_text()
    block = page.split("```yaml\n# puzzles.yaml\n", 1)[1].split("```", 1)[0]
    assert block == Path(example_path("puzzle")).read_text()


@needs_arcade
def test_a_wrong_game_fails_its_points_and_the_run_goes_on(
    tmp_path: Path, kernel: laden.Kernel
) -> None:
    data = yaml.safe_load(Path(example_path("puzzle")).read_text())
    data["sweep"]["stimuli"][0].update(
        parameters={"game": ["sudoku", "sudok"], "difficulty": ["easy"]}, repetitions=2
    )
    path = tmp_path / "wrong.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    out = tmp_path / "out"
    result = run_cli(kernel, "sweep", path, "--output", out, "--workers", "2", code=1)
    assert "2/4 points ok, 2 failed" in result.output
    index = json.loads((out / "index.json").read_text())["points"]
    assert index["puzzle_gsudoku_deasy_rep1"]["status"] == "ok"
    failed = index["puzzle_gsudok_deasy_rep0"]
    assert failed["status"] == "failed"
    assert "parameters.game: unknown game 'sudok' (did you mean 'sudoku'?)" in failed["error"]
    assert len(laden.SweepDataset(out)) == 2


@needs_arcade
def test_cli_runs_the_bundled_puzzle_example_by_name(kernel: laden.Kernel) -> None:
    report = json.loads(
        run_cli(kernel, "sweep", "--example", "puzzle", "--dry-run", "--json", code=0).stdout
    )
    assert report["total"] == 90
    assert report["examples"][0]["id"] == "puzzle_gsudoku_deasy_rep0"
    assert report["output"]["directory"] == "batch_results/puzzles"
    wrong = run_cli(kernel, "sweep", "--example", "puzzles", "--dry-run", code=2)
    assert "'puzzles' is not one of 'gaussian', 'puzzle'" in wrong.output
