"""Evaluations of a trained model, not speed tests: the heat-map and MRI-detector choices, the shortcut proxy, the
uncertainty scores.

Run from the repository as ``python -m scripts.NAME``; the package never imports them.
"""
