"""Strategy creation and run config files: strict values, key paths, file names."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import attrs
import pytest

import laden
from laden.errors import ConfigError
from laden.testing import registered
from laden.validators import increasing, one_of, optional, positive


@attrs.frozen(kw_only=True)
class BudgetSampler:
    name: ClassVar[str] = "budget"
    token_budget: int = attrs.field(default=16384, validator=positive)
    bucket_edges: tuple[int, ...] = attrs.field(default=(), validator=increasing(minimum=1))
    overflow: str = attrs.field(default="error", validator=one_of("error", "drop"))
    max_batch_size: int | None = attrs.field(default=None, validator=optional(positive))
    shuffle: bool = True
    temperature: float = 1.0


class SamplerPlugin:
    @laden.hookimpl
    def laden_register_samplers(self, registry: laden.Registry) -> None:
        registry.add(BudgetSampler)


@pytest.fixture
def k(kernel: laden.Kernel):  # type: ignore[no-untyped-def]
    with registered(kernel, SamplerPlugin()):
        yield kernel


def test_create_builds_the_strategy(k: laden.Kernel) -> None:
    s = k.create("sampler", {"name": "budget", "token_budget": 4096, "bucket_edges": [64, 128]})
    assert s == BudgetSampler(token_budget=4096, bucket_edges=(64, 128))
    assert k.create("sampler", "budget") == BudgetSampler()


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"name": "budget", "token_budget": -5}, "sampler.token_budget: must be > 0, got -5"),
        (
            {"name": "budget", "token_budget": 3.5},
            "sampler.token_budget: expected an integer, got 3.5",
        ),
        (
            {"name": "budget", "token_budget": "8"},
            "sampler.token_budget: expected an integer, got '8'",
        ),
        (
            {"name": "budget", "token_budget": True},
            "sampler.token_budget: expected an integer, got True",
        ),
        (
            {"name": "budget", "shuffle": "yes"},
            "sampler.shuffle: expected true or false, got 'yes'",
        ),
        (
            {"name": "budget", "overflow": "skip"},
            "sampler.overflow: must be one of 'error', 'drop', got 'skip'",
        ),
        (
            {"name": "budget", "bucket_edges": [64, 32]},
            "sampler.bucket_edges[1]: must increase strictly, got 64 then 32",
        ),
        (
            {"name": "budget", "bucket_edges": [64, "x"]},
            "sampler.bucket_edges[1]: expected an integer, got 'x'",
        ),
        ({"name": "budget", "max_batch_size": 0}, "sampler.max_batch_size: must be > 0, got 0"),
        (
            {"name": "budget", "tokn_budget": 5},
            "sampler: unknown key 'tokn_budget' (did you mean 'token_budget'?); "
            "known keys: bucket_edges,",
        ),
        ({"name": "nope"}, "sampler: unknown sampler 'nope'; known samplers: 'budget'"),
        ({"token_budget": 5}, "sampler: missing 'name'; known samplers: 'budget'"),
    ],
)
def test_bad_values_name_their_path(k: laden.Kernel, config: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        k.create("sampler", config)
    assert str(info.value).startswith(message)


def test_several_problems_are_all_reported(k: laden.Kernel) -> None:
    with pytest.raises(ConfigError) as info:
        k.create("sampler", {"name": "budget", "token_budget": "x", "shuffle": 3})
    paths = sorted(p.path for p in info.value.problems)
    assert paths == [("sampler", "shuffle"), ("sampler", "token_budget")]
    assert "also:" in str(info.value)


TOML = """
seed = 7
epochs = 2

[sampler]
name = "budget"
token_budget = 2048
bucket_edges = [128, 512]

[tokenizer]
name = "bytes"
"""

YAML = """
seed: 7
epochs: 2
sampler:
  name: budget
  token_budget: 2048
  bucket_edges: [128, 512]
tokenizer:
  name: bytes
"""


@pytest.mark.parametrize(("suffix", "text"), [(".toml", TOML), (".yaml", YAML)])
def test_load_config(k: laden.Kernel, tmp_path: Path, suffix: str, text: str) -> None:
    path = tmp_path / f"run{suffix}"
    path.write_text(text)
    config = laden.load_config(path, kernel=k)
    assert config.seed == 7
    assert config.epochs == 2
    assert config.sampler == BudgetSampler(token_budget=2048, bucket_edges=(128, 512))
    assert config.tokenizer.fingerprint() == k.create("tokenizer", "bytes").fingerprint()
    assert config.packer is None
    again = laden.RunConfig.from_mapping(config.to_dict(), kernel=k)
    assert again.to_dict() == config.to_dict()


def test_file_errors_name_file_and_key(k: laden.Kernel, tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("[sampler]\nname = 'budget'\ntoken_budget = -5\n")
    with pytest.raises(ConfigError) as info:
        laden.load_config(path, kernel=k)
    assert str(info.value) == f"{path}: sampler.token_budget: must be > 0, got -5"
    assert info.value.source == str(path)


def test_unknown_section(k: laden.Kernel, tmp_path: Path) -> None:
    path = tmp_path / "run.yml"
    path.write_text("samplr:\n  name: budget\n")
    with pytest.raises(
        ConfigError,
        match=r"run.yml: unknown section or setting 'samplr' \(did you mean 'sampler'\?\); "
        r"known: source",
    ):
        laden.load_config(path, kernel=k)


def test_missing_required_key_is_named_with_its_section(k: laden.Kernel) -> None:
    with pytest.raises(ConfigError) as info:
        k.create("sampler", {"name": "token_budget"}, path=("sampler",))
    assert str(info.value) == "sampler: missing required key 'token_budget'"
    assert info.value.path == ("sampler",)


def test_misspelt_key_suggests_the_known_one_before_the_missing_one(k: laden.Kernel) -> None:
    with pytest.raises(ConfigError) as info:
        k.create("sampler", {"name": "token_budget", "token_bugdet": 4096})
    first, *rest = str(info.value).splitlines()
    assert first.startswith(
        "sampler: unknown key 'token_bugdet' (did you mean 'token_budget'?); known keys: "
    )
    assert rest == ["  also: sampler: missing required key 'token_budget'"]
    reasons = [p.reason for p in info.value.problems]
    assert reasons[1] == "missing required key 'token_budget'"


def test_unrelated_unknown_key_gets_no_suggestion(k: laden.Kernel) -> None:
    with pytest.raises(ConfigError) as info:
        k.create("sampler", {"name": "budget", "zzzz": 1, "shufle": True})
    reasons = sorted(p.reason.split(";")[0] for p in info.value.problems)
    assert reasons == ["unknown key 'shufle' (did you mean 'shuffle'?)", "unknown key 'zzzz'"]


def test_file_with_a_misspelt_key_names_file_section_and_suggestion(
    k: laden.Kernel, tmp_path: Path
) -> None:
    path = tmp_path / "run.toml"
    path.write_text("[sampler]\nname = 'token_budget'\ntoken_bugdet = 4096\n")
    with pytest.raises(ConfigError) as info:
        laden.load_config(path, kernel=k)
    assert str(info.value).startswith(
        f"{path}: sampler: unknown key 'token_bugdet' (did you mean 'token_budget'?)"
    )
    assert "missing required key 'token_budget'" in str(info.value)


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("bad.toml", "[sampler\nname = 1\n", "invalid TOML"),
        ("bad.yaml", "sampler:\n  name: [a, b\n", "invalid YAML: line 3, column 1"),
        ("bad.yaml", "- 1\n- 2\n", "expected a table of sections, got list"),
        ("run.json", "{}", "config files must end in .toml, .yaml or .yml"),
        ("run.toml", "epochs = 0\n", "epochs: must be >= 1, got 0"),
        ("run.toml", "seed = 'x'\n", "seed: expected int, got 'x'"),
    ],
)
def test_syntax_and_type_errors(
    k: laden.Kernel, tmp_path: Path, name: str, text: str, message: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        laden.load_config(path, kernel=k)
    assert str(info.value).startswith(str(path))
    assert message in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        laden.load_config(tmp_path / "absent.toml")


def test_yaml_is_safe_loaded(k: laden.Kernel, tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    path.write_text("sampler: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        laden.load_config(path, kernel=k)
