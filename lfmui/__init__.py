"""lfmui: a Gradio app for trying Liquid AI's LFM2 models (see README.md)."""
