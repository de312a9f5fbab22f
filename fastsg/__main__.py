"""``python -m fastsg`` runs the command line."""
from .cli.main import run

run()
