"""The Gradio page of ``cotir app``: controls wired to :mod:`cotir_app.session`.

Every handler turns :class:`~cotir_app.session.AppError` into a message in the page
(``gr.Error``), never a traceback. Models are loaded once per process and shared by
every page; each page keeps its own history of turns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from cotir_app.session import (
    DEFAULT_MAX_LONG_EDGE,
    DEGRADATIONS,
    AppError,
    MethodOption,
    MetricPool,
    RestorerPool,
    RestoreSettings,
    Session,
    Turn,
    custom_checkpoint,
    describe,
    devices,
    fit_long_edge,
    matched_prompt,
    method_options,
    read_image,
    restore_turn,
    suggest_prompt,
)
from models.variants import VARIANTS

CUSTOM_LABEL = "CoTIR checkpoint from a folder (type it under Model)"
TITLE = "CoTIR restoration"


def _image_path(uploaded: str | None, typed: str) -> str | None:
    """The uploaded file if there is one, else the typed path, else None."""
    if uploaded:
        return uploaded
    return typed.strip() or None


def _history(session: Session) -> list[tuple[np.ndarray, str]]:
    return [(turn.output, turn.caption()) for turn in session.turns]


def _shown(turn: Turn, session: Session) -> tuple[Any, ...]:
    """Slider (input vs output), info, download, history, the turn picker and the state."""
    return (
        (turn.input, turn.output),
        describe(turn),
        str(turn.path),
        _history(session),
        gr.update(value=len(session.turns)),
        session,
    )


@dataclass
class _Inputs:
    """The input column: LQ and optional HQ, each uploaded or typed as a path."""

    lq_upload: gr.Image
    lq_path: gr.Textbox
    hq_upload: gr.Image
    hq_path: gr.Textbox


@dataclass
class _ModelControls:
    """The model accordion: method, checkpoint folder, variant, device, (re)load."""

    method: gr.Dropdown
    refresh_button: gr.Button
    folder: gr.Textbox
    variant: gr.Dropdown
    device: gr.Dropdown
    load_button: gr.Button
    load_log: gr.Textbox


@dataclass
class _PromptControls:
    """Degradation, instruction kind and text, the suggestion button."""

    degradation: gr.Dropdown
    prompt_kind: gr.Radio
    prompt: gr.Textbox
    suggest_button: gr.Button


@dataclass
class _SamplingControls:
    """Euler steps, seed, size limit, tiling and the two post-processing options."""

    steps: gr.Slider
    seed: gr.Number
    max_edge: gr.Number
    tiled: gr.Checkbox
    tile_size: gr.Slider
    tile_overlap: gr.Slider
    enhance: gr.Checkbox
    gamma: gr.Slider
    sigma: gr.Slider
    white_balance: gr.Checkbox


@dataclass
class _Results:
    """The comparison slider, result line, download and the history of turns."""

    result: gr.ImageSlider
    info: gr.Textbox
    download: gr.DownloadButton
    history: gr.Gallery
    turn_number: gr.Number
    back_button: gr.Button


class _Page:
    """What the page's handlers share: the method list, the loaded models, the metrics."""

    def __init__(self, training_root: Path, output_dir: Path) -> None:
        self.training_root = training_root
        self.output_dir = output_dir
        self.pool = RestorerPool()
        self.metrics = MetricPool()
        self.options: dict[str, MethodOption] = {}

    def refresh(self) -> list[str]:
        """Re-read the finished checkpoints; the method labels, the typed folder last."""
        self.options.clear()
        for option in method_options(self.training_root):
            self.options[option.label] = option
        return [*self.options, CUSTOM_LABEL]

    def default_method(self, labels: list[str]) -> str:
        """The first CoTIR checkpoint, else the first method."""
        cotir = (label for label, option in self.options.items() if option.kind == "cotir")
        return next(cotir, labels[0])

    def chosen_method(self, label: str, folder: str, variant: str | None) -> MethodOption:
        """The method a label names (the typed folder for the custom label)."""
        if label == CUSTOM_LABEL:
            return custom_checkpoint(folder, variant)
        if label not in self.options:
            raise AppError(f"Unknown method {label!r}: press Refresh.")
        return self.options[label]

    def on_load(self, label: str, typed: str, variant_name: str, device_name: str) -> str:
        """Load (or reload) the chosen checkpoint on the device and say what was loaded."""
        try:
            option = self.chosen_method(label, typed, variant_name)
            if option.kind != "cotir":
                return f"{option.label} needs no model."
            self.pool.loaded.pop((str(option.checkpoint), option.variant, device_name), None)
            restorer = self.pool.get(option, device_name)
        except AppError as error:
            raise gr.Error(str(error)) from None
        return (
            f"loaded {option.label} on {device_name}: variant {restorer.variant.name}, "
            f"{restorer.dtype}, flow from {restorer.flow_start}"
        )

    def run(self, refine: bool, *values: Any) -> tuple[Any, ...]:
        """Restore (or refine the last output) with the page's controls, in
        :func:`_control_list` order."""
        (
            lq_file,
            lq_typed,
            hq_file,
            hq_typed,
            label,
            typed,
            variant_name,
            device_name,
            name,
            text,
            step_count,
            seed_value,
            edge,
            use_tiles,
            tile,
            overlap,
            do_enhance,
            gamma_value,
            sigma_value,
            do_balance,
            session,
        ) = values
        session = session or Session()
        try:
            if not refine:
                session, text = _new_session(lq_file, lq_typed, hq_file, hq_typed, edge, text)
            settings = RestoreSettings(
                method=self.chosen_method(label, typed, variant_name),
                prompt=text,
                degradation=name or None,
                steps=int(step_count) or None,
                seed=int(seed_value or 0),
                device=device_name,
                tile_size=int(tile) if use_tiles else None,
                tile_overlap=int(overlap) if use_tiles else None,
                enhance=bool(do_enhance),
                white_balance=bool(do_balance),
                gamma=float(gamma_value),
                sigma=float(sigma_value),
            )
            turn = restore_turn(
                session,
                settings,
                refine=refine,
                pool=self.pool,
                metrics=self.metrics,
                output_dir=self.output_dir,
            )
        except AppError as error:
            raise gr.Error(str(error)) from None
        return _shown(turn, session)


def _new_session(
    lq_file: str | None,
    lq_typed: str,
    hq_file: str | None,
    hq_typed: str,
    edge: float | None,
    text: str,
) -> tuple[Session, str]:
    """A new session on the input (fitted to the size limit) and its optional reference;
    an empty instruction is filled from the image's prompt file or bench record."""
    source = _image_path(lq_file, lq_typed)
    if source is None:
        raise AppError("Give an input image first (upload it or type its path).")
    session = Session(
        source=fit_long_edge(read_image(source, "input image"), int(edge or 0)),
        source_name=Path(source).stem or "image",
    )
    reference = _image_path(hq_file, hq_typed)
    if reference is not None:
        session.reference = read_image(reference, "reference image")
    if not text.strip():
        found = matched_prompt(source)
        text = (found.pick("precise") if found else None) or ""
    return session, text


def on_path(typed: str, kind: str) -> tuple[Any, Any]:
    """A typed path with a prompt file or bench record fills the instruction and degradation."""
    found = matched_prompt(typed) if typed.strip() else None
    if found is None:
        return gr.update(), gr.update()
    text = found.pick("precise" if kind == "precise" else "vague")
    return gr.update(value=text or ""), gr.update(value=found.degradation or "")


def on_degradation(name: str, current: str) -> Any:
    """Naming the degradation fills an empty instruction with its suggestion."""
    if not name or current.strip():
        return gr.update()
    try:
        return suggest_prompt(name)
    except AppError:
        return gr.update()


def on_suggest(name: str) -> str:
    """The degradation's precise instruction, or a message asking for a degradation."""
    if not name:
        raise gr.Error("Pick the degradation first.")
    try:
        return suggest_prompt(name)
    except AppError as error:
        raise gr.Error(str(error)) from None


def on_back(number: float, session: Session | None) -> tuple[Any, ...]:
    """Show an earlier turn; the next refinement starts from it."""
    session = session or Session()
    try:
        turn = session.go_back(int(number))
    except AppError as error:
        raise gr.Error(str(error)) from None
    return _shown(turn, session)


def _input_column() -> _Inputs:
    return _Inputs(
        lq_upload=gr.Image(
            label="Input (LQ)", type="filepath", sources=["upload", "clipboard"], elem_id="lq-image"
        ),
        lq_path=gr.Textbox(label="or the LQ image's path", elem_id="lq-path"),
        hq_upload=gr.Image(
            label="Reference (HQ, optional: PSNR/SSIM)",
            type="filepath",
            sources=["upload", "clipboard"],
            elem_id="hq-image",
        ),
        hq_path=gr.Textbox(label="or the HQ image's path", elem_id="hq-path"),
    )


def _model_controls(labels: list[str], default_method: str, default_device: str) -> _ModelControls:
    with gr.Accordion("Model", open=True):
        return _ModelControls(
            method=gr.Dropdown(labels, value=default_method, label="Method", elem_id="method"),
            refresh_button=gr.Button("Refresh the list", size="sm"),
            folder=gr.Textbox(
                label="Checkpoint folder (ours, or the release's cot_adapter.pt + lora.pt; "
                "relative paths under COTIR_WEIGHTS_DIR)",
                elem_id="checkpoint-folder",
            ),
            variant=gr.Dropdown(
                ["", *sorted(VARIANTS)], value="", label="Variant (the release's files need one)"
            ),
            device=gr.Dropdown(devices(), value=default_device, label="Device"),
            load_button=gr.Button("Load / reload", size="sm"),
            load_log=gr.Textbox(label="Model", lines=2, interactive=False),
        )


def _prompt_controls() -> _PromptControls:
    return _PromptControls(
        degradation=gr.Dropdown(
            ["", *DEGRADATIONS],
            value="",
            label="Degradation (the classical chain "
            "needs it; Suggest writes a precise instruction for it)",
            elem_id="degradation",
        ),
        prompt_kind=gr.Radio(["precise", "vague"], value="precise", label="Instruction"),
        prompt=gr.Textbox(label="Instruction", lines=2, elem_id="prompt"),
        suggest_button=gr.Button("Suggest a precise instruction", size="sm", elem_id="suggest"),
    )


def _sampling_controls() -> _SamplingControls:
    with gr.Accordion("Sampling and post-processing", open=False):
        return _SamplingControls(
            steps=gr.Slider(0, 50, value=0, step=1, label="Euler steps (0: the model's own)"),
            seed=gr.Number(42, precision=0, label="Seed"),
            max_edge=gr.Number(
                DEFAULT_MAX_LONG_EDGE, precision=0, label="Max long edge (0: as is)"
            ),
            tiled=gr.Checkbox(False, label="Tiled (any size, bounded memory)", elem_id="tiled"),
            tile_size=gr.Slider(32, 2048, value=128, step=16, label="Tile size (px)"),
            tile_overlap=gr.Slider(0, 512, value=32, step=8, label="Tile overlap (px)"),
            enhance=gr.Checkbox(False, label="Retinex gamma enhancement"),
            gamma=gr.Slider(0.5, 3.0, value=1.5, step=0.1, label="Gamma (> 1 brightens)"),
            sigma=gr.Slider(10, 200, value=100, step=10, label="Illumination blur sigma"),
            white_balance=gr.Checkbox(False, label="Gray-world white balance"),
        )


def _results() -> _Results:
    result = gr.ImageSlider(label="Input | output (drag to compare)", elem_id="result")
    info = gr.Textbox(label="Result", lines=2, interactive=False, elem_id="info")
    download = gr.DownloadButton("Download the output (PNG)", elem_id="download")
    with gr.Accordion("History", open=True):
        history = gr.Gallery(
            label="Turns",
            columns=6,
            height=220,
            allow_preview=False,
            object_fit="contain",
            elem_id="history",
        )
        with gr.Row():
            turn_number = gr.Number(1, precision=0, minimum=1, label="Turn", elem_id="turn")
            back_button = gr.Button("Go back to this turn", elem_id="go-back")
    return _Results(result, info, download, history, turn_number, back_button)


def _control_list(
    inputs: _Inputs,
    model: _ModelControls,
    prompts: _PromptControls,
    sampling: _SamplingControls,
    session_state: gr.State,
) -> list[Any]:
    """Every control a restore reads, in the order :meth:`_Page.run` unpacks them."""
    return [
        inputs.lq_upload,
        inputs.lq_path,
        inputs.hq_upload,
        inputs.hq_path,
        model.method,
        model.folder,
        model.variant,
        model.device,
        prompts.degradation,
        prompts.prompt,
        sampling.steps,
        sampling.seed,
        sampling.max_edge,
        sampling.tiled,
        sampling.tile_size,
        sampling.tile_overlap,
        sampling.enhance,
        sampling.gamma,
        sampling.sigma,
        sampling.white_balance,
        session_state,
    ]


def build_app(training_root: Path, output_dir: Path, *, default_device: str = "cpu") -> gr.Blocks:
    """The page: inputs, method and prompt, controls, result, history."""
    page = _Page(training_root, output_dir)
    labels = page.refresh()
    with gr.Blocks(title=TITLE, analytics_enabled=False) as app:
        session_state = gr.State(None)  # a Session once the first image is restored
        gr.Markdown(
            f"## {TITLE}\nUpload a degraded image (or type its path), pick a method and an "
            "instruction, and restore. **Refine** restores the last output again with a new "
            "instruction; the history keeps every turn."
        )
        with gr.Row():
            with gr.Column(scale=1):
                inputs = _input_column()
            with gr.Column(scale=1):
                model = _model_controls(labels, page.default_method(labels), default_device)
                prompts = _prompt_controls()
                sampling = _sampling_controls()
                with gr.Row():
                    restore_button = gr.Button("Restore", variant="primary", elem_id="restore")
                    refine_button = gr.Button("Refine the last output", elem_id="refine")
        results = _results()
        controls = _control_list(inputs, model, prompts, sampling, session_state)
        shown = [
            results.result,
            results.info,
            results.download,
            results.history,
            results.turn_number,
            session_state,
        ]
        path_and_kind = [inputs.lq_path, prompts.prompt_kind]
        inputs.lq_path.blur(on_path, path_and_kind, [prompts.prompt, prompts.degradation])
        prompts.prompt_kind.change(on_path, path_and_kind, [prompts.prompt, prompts.degradation])
        prompts.degradation.input(
            on_degradation, [prompts.degradation, prompts.prompt], prompts.prompt
        )
        prompts.suggest_button.click(on_suggest, prompts.degradation, prompts.prompt)
        model.refresh_button.click(lambda: gr.update(choices=page.refresh()), None, model.method)
        model.load_button.click(
            page.on_load, [model.method, model.folder, model.variant, model.device], model.load_log
        )
        restore_button.click(lambda *v: page.run(False, *v), controls, shown)
        refine_button.click(lambda *v: page.run(True, *v), controls, shown)
        results.back_button.click(on_back, [results.turn_number, session_state], shown)
    return app
