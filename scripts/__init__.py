"""Evaluations of a trained model that are not speed tests: the heat-map choice, the sequence-shortcut proxy, the
uncertainty scores. Run from the repository as ``python -m scripts.NAME``; the package never imports them.
"""
