"""`unnoise serve`: the models of trained runs behind an HTTP API and a page that shows them denoise.

    models = load_models(["runs/fashion-unet"])              # each loaded once, through Pipeline
    app = create_app(models, Path("results"), Limits(max_n=8), token=None)
    uvicorn.run(app, host="127.0.0.1", port=8000)

The pieces, in the order a request meets them: `requests` (the JobRequest schema and the checks that
bound a job), `jobs` (one queue, one worker thread, events per job), `work` (a job run through the
pipeline or an editor, with a step callback for progress, previews and cancelling), `app` (the
routes, server-sent events, the token) and `page/` (plain HTML and a script, nothing fetched from
elsewhere).
"""

from unnoise.serve.app import create_app
from unnoise.serve.models import ServedModel, load_models
from unnoise.serve.requests import JobRequest, Limits

__all__ = ["create_app", "load_models", "ServedModel", "JobRequest", "Limits"]
