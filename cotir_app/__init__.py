"""``cotir app``: an interactive restoration web app (Gradio) over the project's restorers."""
