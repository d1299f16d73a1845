"""`lmlab serve`: an OpenAI-compatible HTTP server (FastAPI + uvicorn) around one model worker, and a chat page."""

from lmlab.serve.app import ServeSettings, create_app
from lmlab.serve.engine import Engine, Finish, Job, QueueFull, decode_jobs

__all__ = ["Engine", "Finish", "Job", "QueueFull", "ServeSettings", "create_app", "decode_jobs"]
