"""The Gradio UI: the only package that imports gradio."""

from lfmui.ui.app import build_app, launch_settings

__all__ = ["build_app", "launch_settings"]
