"""Prompt data files: counts, coverage of every degradation, hygiene, the instruction template."""

from __future__ import annotations

from importlib import resources

import pytest

from cotir_pipeline.annotation import prompts, vocabulary
from cotir_pipeline.annotation.prompts import (
    PromptFileError,
    gen_prompts,
    instruction_template,
    parse_instruction,
    prompt_file_names,
    recipe_hint,
    spe_prompts,
)
from cotir_pipeline.tasks import Degradation


def _raw(relative: str) -> str:
    path = resources.files("cotir_pipeline.annotation").joinpath("prompts")
    for part in relative.split("/"):
        path = path.joinpath(part)
    return path.read_text(encoding="utf-8")


def test_every_prompt_file_ships() -> None:
    for name in prompt_file_names():
        assert _raw(name).strip(), name


@pytest.mark.parametrize(
    "name", ["gen_prompt.txt", *[f"spe_prompt/{d.value}.txt" for d in Degradation]]
)
def test_list_files_are_clean(name: str) -> None:
    text = _raw(name)
    assert text.endswith("\n"), "ends with a newline"
    assert not text.endswith("\n\n"), "no trailing blank line"
    lines = text.splitlines()
    assert all(line.strip() for line in lines), "no empty lines"
    assert all(line == line.strip() for line in lines), "no surrounding spaces"
    folded = [line.casefold() for line in lines]
    assert len(set(folded)) == len(folded), "no duplicates (case-insensitive)"


def test_gen_prompts_are_many_varied_and_vague() -> None:
    lines = gen_prompts()
    assert len(lines) >= 200
    assert len({line.split()[0].casefold() for line in lines}) >= 50, "varied openings"
    for line in lines:
        named = [d.value for d in Degradation if vocabulary.names(d, line, strict=True)]
        assert not named, f"vague prompt names a degradation: {line!r} -> {named}"


def test_every_degradation_has_precise_templates_naming_it() -> None:
    spe_folder = resources.files("cotir_pipeline.annotation").joinpath("prompts", "spe_prompt")
    shipped = {entry.name.removesuffix(".txt") for entry in spe_folder.iterdir()}
    assert shipped == {d.value for d in Degradation}
    for degradation in Degradation:
        lines = spe_prompts(degradation)
        assert len(lines) >= 10, degradation
        for line in lines:
            assert vocabulary.names(degradation, line), f"{degradation}: {line!r}"


def test_unknown_degradation_has_no_templates() -> None:
    with pytest.raises(ValueError, match="not a valid Degradation"):
        spe_prompts("fog_of_war")


def test_vocabulary_tables_cover_every_degradation() -> None:
    for table in (
        vocabulary.DISPLAY_NAMES,
        vocabulary.KEYWORDS,
        vocabulary.STRICT_KEYWORDS,
        vocabulary.ACTIONS,
    ):
        assert set(table) == set(Degradation)
    for degradation in Degradation:
        for action in vocabulary.ACTIONS[degradation]:
            assert vocabulary.names(degradation, action), action


def test_instruction_template_has_version_and_renders() -> None:
    template = instruction_template()
    assert template.declared_version == "cotir-vlm-instruction-1"
    assert template.version.startswith("cotir-vlm-instruction-1+")
    assert len(template.version.split("+")[1]) == 12
    recipe = [{"op": "noise", "params": {"kind": "gaussian", "sigma": 25.123, "seed": 7}}]
    rendered = template.render("low_light+noise", recipe)
    assert "Degradation labels: low_light+noise" in rendered.task
    assert "low light (underexposure) and noise" in rendered.task
    assert "noise (kind=gaussian, sigma=25.1)" in rendered.task
    assert "seed" not in rendered.task
    assert "$" not in rendered.task + rendered.system
    assert rendered.system
    assert rendered.before_lq
    assert rendered.before_hq
    with pytest.raises(ValueError, match="unknown degradation"):
        template.render("low_light+gremlins")


def test_template_version_follows_content() -> None:
    text = _raw("vlm_instruction.txt")
    same = parse_instruction(text)
    edited = parse_instruction(text.replace("image restoration expert", "restoration expert"))
    assert same.version == instruction_template().version
    assert edited.declared_version == same.declared_version
    assert edited.version != same.version


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[system]\nx\n", "version"),
        ("# version: v1\n\n[system]\nx\n[task]\ny\n", "sections"),
        ("# version: v1\n\n[system]\n$oops\n[before_lq]\na\n[before_hq]\nb\n[task]\nc\n", "bad"),
        ("# version: v1\n\n[system]\n\n[before_lq]\na\n[before_hq]\nb\n[task]\nc\n", "empty"),
        ("# version: v1\nstray\n[system]\nx\n", "before the first"),
    ],
)
def test_malformed_instruction_is_rejected(text: str, message: str) -> None:
    with pytest.raises(PromptFileError, match=message):
        parse_instruction(text)


def test_recipe_hint() -> None:
    assert recipe_hint(()) == "none (a real captured pair)"
    steps = [
        {"op": "haze", "params": {"beta": 1.23456, "depth_source": "proxy", "depth_cap": None}},
        {"op": "jpeg", "params": {"quality": 17}},
        {"op": "lost_color", "params": {}},
    ]
    assert recipe_hint(steps) == "haze (beta=1.23); jpeg (quality=17); lost_color"
    with pytest.raises(ValueError, match="not an"):
        recipe_hint(["haze"])  # type: ignore[list-item]


def test_prompt_lists_version_is_a_digest() -> None:
    version = prompts.prompt_lists_version()
    assert version.startswith("prompts-")
    assert len(version) == len("prompts-") + 12
