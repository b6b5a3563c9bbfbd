"""The FastAPI gateway and the command line. Nothing here imports torch at import time."""
