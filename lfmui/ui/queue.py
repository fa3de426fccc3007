"""How events that use the model share the server: one concurrency group for all of them.

Every event that loads, unloads or generates joins the "accelerator" group. The group admits a
few events at once so the next request's image preprocessing overlaps the current reply; the
engine's single generation thread still runs one generate() at a time, and the time a reply
waits for it is reported as its queue wait. gradio takes the smallest limit any event of a group
names, so each event names this one.
"""

from __future__ import annotations

ACCELERATOR = {"concurrency_id": "accelerator", "concurrency_limit": 4}
