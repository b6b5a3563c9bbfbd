"""The FastAPI gateway: HTTP only. It imports jobs/ and models.limits, never torch or the worker."""
