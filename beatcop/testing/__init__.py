"""
Testing with BeatCop: for the applications that embed it (tested with
trial or pytest-twisted), and for BeatCop's own suite.
"""
