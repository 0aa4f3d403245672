"""Celery: the app, thin tasks, the canvas that turns a Plan into tasks, the per-process model cache."""
