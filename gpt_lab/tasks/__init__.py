"""The jobs scripts/run.py dispatches to."""
