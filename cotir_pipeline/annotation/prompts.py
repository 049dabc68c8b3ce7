"""The prompt material shipped as data files in ``annotation/prompts/``.

- ``gen_prompt.txt``: vague, generic requests, one per line (the public release's
  file of the same name: the vague arm of the prompt curriculum reads it).
- ``spe_prompt/<degradation>.txt``: precise instructions per atomic degradation.
- ``vlm_instruction.txt``: the instruction the annotating VLM sees, with a declared
  version in its header and ``[section]`` blocks.

The files are read lazily (nothing happens at import) and cached. Versions are the
declared name plus a digest of the content, so an edit that forgets to bump the
declared version still changes the version, and with it every cache key.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from string import Template
from typing import Any

from cotir_pipeline.annotation.schema import ANSWER_JSON_SCHEMA
from cotir_pipeline.annotation.vocabulary import display_list
from cotir_pipeline.tasks import Degradation, parse_degradation_label

PROMPTS_PACKAGE = "cotir_pipeline.annotation"
PROMPTS_FOLDER = "prompts"
GEN_PROMPT_FILE = "gen_prompt.txt"
SPE_PROMPT_FOLDER = "spe_prompt"
INSTRUCTION_FILE = "vlm_instruction.txt"
INSTRUCTION_SECTIONS = ("system", "before_lq", "before_hq", "task")

_VERSION_LINE = re.compile(r"^#\s*version:\s*(\S+)\s*$")
_SECTION_LINE = re.compile(r"^\[([a-z_]+)\]\s*$")


class PromptFileError(ValueError):
    """A prompt data file is missing, empty or malformed."""


def _read(relative: str) -> str:
    path = resources.files(PROMPTS_PACKAGE).joinpath(PROMPTS_FOLDER)
    for part in relative.split("/"):
        path = path.joinpath(part)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptFileError(f"prompt file {PROMPTS_FOLDER}/{relative} is missing") from None


def _lines(relative: str) -> tuple[str, ...]:
    text = _read(relative)
    lines = tuple(text.splitlines())
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise PromptFileError(f"{PROMPTS_FOLDER}/{relative}:{number} is empty")
        if line != line.strip():
            raise PromptFileError(f"{PROMPTS_FOLDER}/{relative}:{number} has surrounding spaces")
    if not lines:
        raise PromptFileError(f"{PROMPTS_FOLDER}/{relative} has no prompts")
    return lines


@cache
def gen_prompts() -> tuple[str, ...]:
    """The vague, generic requests of ``gen_prompt.txt``, in file order."""
    return _lines(GEN_PROMPT_FILE)


@cache
def spe_prompts(degradation: Degradation | str) -> tuple[str, ...]:
    """The precise instructions for one atomic degradation, in file order."""
    value = Degradation(degradation).value
    return _lines(f"{SPE_PROMPT_FOLDER}/{value}.txt")


def prompt_file_names() -> list[str]:
    """Paths (relative to ``prompts/``) of every list file the package must ship."""
    names = [GEN_PROMPT_FILE, INSTRUCTION_FILE]
    names += [f"{SPE_PROMPT_FOLDER}/{item.value}.txt" for item in Degradation]
    return names


@cache
def prompt_lists_version() -> str:
    """Digest of ``gen_prompt.txt`` and every ``spe_prompt`` file (``prompts-<12 hex>``)."""
    hasher = hashlib.sha256()
    for name in [GEN_PROMPT_FILE] + [f"{SPE_PROMPT_FOLDER}/{d.value}.txt" for d in Degradation]:
        hasher.update(name.encode())
        hasher.update(b"\0")
        hasher.update(_read(name).encode("utf-8"))
        hasher.update(b"\0")
    return f"prompts-{hasher.hexdigest()[:12]}"


@dataclass(frozen=True)
class RenderedInstruction:
    """The texts of one annotation request, in the order the chat message uses them."""

    system: str
    before_lq: str
    before_hq: str
    task: str


@dataclass(frozen=True)
class InstructionTemplate:
    """The VLM instruction: declared version, sections, and the version used in cache keys."""

    declared_version: str
    sections: Mapping[str, str]
    digest: str

    @property
    def version(self) -> str:
        """``<declared>+<digest of template and answer schema>``, e.g. ``cotir-vlm-1+3fa2...``."""
        return f"{self.declared_version}+{self.digest}"

    def render(
        self, degradation_label: str, recipe: Sequence[Mapping[str, Any]] = ()
    ) -> RenderedInstruction:
        """Fill the placeholders for one sample (unknown label parts raise ValueError)."""
        parts = parse_degradation_label(degradation_label)
        values = {
            "labels": degradation_label,
            "degradation_names": display_list(parts),
            "recipe_hint": recipe_hint(recipe),
        }
        filled = {name: Template(text).substitute(values) for name, text in self.sections.items()}
        return RenderedInstruction(**filled)


def parse_instruction(text: str) -> InstructionTemplate:
    """Parse the instruction file format: ``# version:`` header, then ``[section]`` blocks."""
    lines = text.splitlines()
    declared = None
    index = 0
    while index < len(lines) and lines[index].startswith("#"):
        match = _VERSION_LINE.match(lines[index])
        if match:
            declared = match.group(1)
        index += 1
    if declared is None:
        raise PromptFileError(f"{INSTRUCTION_FILE} has no '# version: <name>' header line")
    sections: dict[str, list[str]] = {}
    current: str | None = None
    for line in lines[index:]:
        match = _SECTION_LINE.match(line)
        if match:
            current = match.group(1)
            if current in sections:
                raise PromptFileError(f"{INSTRUCTION_FILE}: section [{current}] appears twice")
            sections[current] = []
        elif current is not None:
            sections[current].append(line)
        elif line.strip():
            raise PromptFileError(f"{INSTRUCTION_FILE}: text before the first [section]")
    if set(sections) != set(INSTRUCTION_SECTIONS):
        raise PromptFileError(
            f"{INSTRUCTION_FILE}: sections {sorted(sections)} != {sorted(INSTRUCTION_SECTIONS)}"
        )
    texts = {name: "\n".join(body).strip() for name, body in sections.items()}
    for name, body in texts.items():
        if not body:
            raise PromptFileError(f"{INSTRUCTION_FILE}: section [{name}] is empty")
        try:
            Template(body).substitute(labels="x", degradation_names="x", recipe_hint="x")
        except (KeyError, ValueError) as error:
            raise PromptFileError(f"{INSTRUCTION_FILE} [{name}]: bad placeholder {error}") from None
    hasher = hashlib.sha256(text.encode("utf-8"))
    hasher.update(json.dumps(ANSWER_JSON_SCHEMA, sort_keys=True).encode("utf-8"))
    return InstructionTemplate(declared, texts, hasher.hexdigest()[:12])


@cache
def instruction_template() -> InstructionTemplate:
    """The shipped VLM instruction template."""
    return parse_instruction(_read(INSTRUCTION_FILE))


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def recipe_hint(recipe: Sequence[Mapping[str, Any]]) -> str:
    """Short text of the applied synthesis steps, e.g. ``noise (kind=gaussian, sigma=25.3)``.

    Random-field seeds and bookkeeping fields are left out; a fetched pair (no recipe)
    gives ``"none (a real captured pair)"``.
    """
    if not recipe:
        return "none (a real captured pair)"
    skipped = {"seed", "depth_source", "restore_size", "quantize", "tint", "text"}
    steps = []
    for step in recipe:
        if not isinstance(step, Mapping) or "op" not in step:
            raise ValueError(f"recipe step {step!r} is not an {{'op', 'params'}} record")
        params = step.get("params") or {}
        shown = [
            f"{key}={_number(value)}"
            for key, value in params.items()
            if key not in skipped and not isinstance(value, list | dict) and value is not None
        ]
        steps.append(f"{step['op']} ({', '.join(shown)})" if shown else str(step["op"]))
    return "; ".join(steps)
