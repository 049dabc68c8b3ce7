"""The Gradio page of ``cotir app``: controls wired to :mod:`cotir_app.session`.

Every handler turns :class:`~cotir_app.session.AppError` into a message in the page
(``gr.Error``), never a traceback. Models are loaded once per process and shared by
every page; each page keeps its own history of turns.
"""

from __future__ import annotations

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


def build_app(training_root: Path, output_dir: Path, *, default_device: str = "cpu") -> gr.Blocks:
    """The page: inputs, method and prompt, controls, result, history."""
    pool = RestorerPool()
    metrics = MetricPool()
    options: dict[str, MethodOption] = {}

    def refresh() -> list[str]:
        options.clear()
        for option in method_options(training_root):
            options[option.label] = option
        return [*options, CUSTOM_LABEL]

    labels = refresh()
    default_method = next(
        (label for label, option in options.items() if option.kind == "cotir"), labels[0]
    )

    def chosen_method(label: str, folder: str, variant: str | None) -> MethodOption:
        if label == CUSTOM_LABEL:
            return custom_checkpoint(folder, variant)
        if label not in options:
            raise AppError(f"Unknown method {label!r}: press Refresh.")
        return options[label]

    with gr.Blocks(title=TITLE, analytics_enabled=False) as app:
        session_state = gr.State(None)  # a Session once the first image is restored
        gr.Markdown(
            f"## {TITLE}\nUpload a degraded image (or type its path), pick a method and an "
            "instruction, and restore. **Refine** restores the last output again with a new "
            "instruction; the history keeps every turn."
        )
        with gr.Row():
            with gr.Column(scale=1):
                lq_upload = gr.Image(
                    label="Input (LQ)",
                    type="filepath",
                    sources=["upload", "clipboard"],
                    elem_id="lq-image",
                )
                lq_path = gr.Textbox(label="or the LQ image's path", elem_id="lq-path")
                hq_upload = gr.Image(
                    label="Reference (HQ, optional: PSNR/SSIM)",
                    type="filepath",
                    sources=["upload", "clipboard"],
                    elem_id="hq-image",
                )
                hq_path = gr.Textbox(label="or the HQ image's path", elem_id="hq-path")
            with gr.Column(scale=1):
                with gr.Accordion("Model", open=True):
                    method = gr.Dropdown(
                        labels, value=default_method, label="Method", elem_id="method"
                    )
                    refresh_button = gr.Button("Refresh the list", size="sm")
                    folder = gr.Textbox(
                        label="Checkpoint folder (ours, or the release's cot_adapter.pt + "
                        "lora.pt; relative paths under COTIR_WEIGHTS_DIR)",
                        elem_id="checkpoint-folder",
                    )
                    variant = gr.Dropdown(
                        ["", *sorted(VARIANTS)],
                        value="",
                        label="Variant (the release's files need one)",
                    )
                    device = gr.Dropdown(devices(), value=default_device, label="Device")
                    load_button = gr.Button("Load / reload", size="sm")
                    load_log = gr.Textbox(label="Model", lines=2, interactive=False)
                degradation = gr.Dropdown(
                    ["", *DEGRADATIONS],
                    value="",
                    label="Degradation (the classical chain "
                    "needs it; Suggest writes a precise instruction for it)",
                    elem_id="degradation",
                )
                prompt_kind = gr.Radio(["precise", "vague"], value="precise", label="Instruction")
                prompt = gr.Textbox(label="Instruction", lines=2, elem_id="prompt")
                suggest_button = gr.Button(
                    "Suggest a precise instruction", size="sm", elem_id="suggest"
                )
                with gr.Accordion("Sampling and post-processing", open=False):
                    steps = gr.Slider(1, 50, value=4, step=1, label="Euler steps")
                    seed = gr.Number(42, precision=0, label="Seed")
                    max_edge = gr.Number(
                        DEFAULT_MAX_LONG_EDGE, precision=0, label="Max long edge (0: as is)"
                    )
                    tiled = gr.Checkbox(
                        False, label="Tiled (any size, bounded memory)", elem_id="tiled"
                    )
                    tile_size = gr.Slider(32, 2048, value=128, step=16, label="Tile size (px)")
                    tile_overlap = gr.Slider(0, 512, value=32, step=8, label="Tile overlap (px)")
                    enhance = gr.Checkbox(False, label="Retinex gamma enhancement")
                    gamma = gr.Slider(0.5, 3.0, value=1.5, step=0.1, label="Gamma (> 1 brightens)")
                    sigma = gr.Slider(10, 200, value=100, step=10, label="Illumination blur sigma")
                    white_balance = gr.Checkbox(False, label="Gray-world white balance")
                with gr.Row():
                    restore_button = gr.Button("Restore", variant="primary", elem_id="restore")
                    refine_button = gr.Button("Refine the last output", elem_id="refine")
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

        def on_path(typed: str, kind: str) -> tuple[Any, Any]:
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
            if not name:
                raise gr.Error("Pick the degradation first.")
            try:
                return suggest_prompt(name)
            except AppError as error:
                raise gr.Error(str(error)) from None

        def on_load(label: str, typed: str, variant_name: str, device_name: str) -> str:
            try:
                option = chosen_method(label, typed, variant_name)
                if option.kind != "cotir":
                    return f"{option.label} needs no model."
                pool.loaded.pop((str(option.checkpoint), option.variant, device_name), None)
                restorer = pool.get(option, device_name)
            except AppError as error:
                raise gr.Error(str(error)) from None
            return (
                f"loaded {option.label} on {device_name}: variant {restorer.variant.name}, "
                f"{restorer.dtype}, flow from {restorer.flow_start}"
            )

        def run(refine: bool, *values: Any) -> tuple[Any, ...]:
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
                settings = RestoreSettings(
                    method=chosen_method(label, typed, variant_name),
                    prompt=text,
                    degradation=name or None,
                    steps=int(step_count),
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
                    pool=pool,
                    metrics=metrics,
                    output_dir=output_dir,
                )
            except AppError as error:
                raise gr.Error(str(error)) from None
            return _shown(turn, session)

        def on_back(number: float, session: Session | None) -> tuple[Any, ...]:
            session = session or Session()
            try:
                turn = session.go_back(int(number))
            except AppError as error:
                raise gr.Error(str(error)) from None
            return _shown(turn, session)

        controls = [
            lq_upload,
            lq_path,
            hq_upload,
            hq_path,
            method,
            folder,
            variant,
            device,
            degradation,
            prompt,
            steps,
            seed,
            max_edge,
            tiled,
            tile_size,
            tile_overlap,
            enhance,
            gamma,
            sigma,
            white_balance,
            session_state,
        ]
        shown = [result, info, download, history, turn_number, session_state]
        lq_path.blur(on_path, [lq_path, prompt_kind], [prompt, degradation])
        prompt_kind.change(on_path, [lq_path, prompt_kind], [prompt, degradation])
        degradation.input(on_degradation, [degradation, prompt], prompt)
        suggest_button.click(on_suggest, degradation, prompt)
        refresh_button.click(lambda: gr.update(choices=refresh()), None, method)
        load_button.click(on_load, [method, folder, variant, device], load_log)
        restore_button.click(lambda *v: run(False, *v), controls, shown)
        refine_button.click(lambda *v: run(True, *v), controls, shown)
        back_button.click(on_back, [turn_number, session_state], shown)
    return app
