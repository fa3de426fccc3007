"""The OpenAI-compatible door on the app's server, apart from gradio: ``protocol`` (the request
as a pydantic model, its checks, OpenAI-shaped errors), ``completions`` (the reply, through the
same chat turn as the UI), ``routes`` (``/v1/models``, ``/v1/chat/completions``) and ``guard``
(what any HTTP request may carry, before gradio reads it). See docs/api.md and docs/security.md."""
