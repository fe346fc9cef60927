"""`vlmkit app` and `vlmkit serve --ui`: a page in the browser, served by vlmkit's own server (`vlmkit.serve`).

Chat about images (the server's OpenAI API, streamed; grounding boxes drawn), look at a dataset's rows and
`data check` report, launch `vlmkit sft` runs and watch them from their run folders, compare eval results.

The stack, chosen for the long term: plain JavaScript modules and CSS in `static/`, served from the package
by the FastAPI server vlmkit already has. No UI framework, no build step, no CDN: nothing to pin, nothing
that breaks with another library's release, and it works offline. routes.py: the routes; runs.py: training
runs on disk; form.py: the training form from sft's option groups; datasets.py: the data view.
"""

from vlmkit.ui.routes import check_exposure, ui_routes

__all__ = ["check_exposure", "ui_routes"]
