"""Evaluation: the paper's comparison, figures and reports.

``loading`` (labelled stores, scores and threshold records in), ``evaluate`` (a model against
the former method on labelled stores, with :mod:`scanstream.metrics`), ``figures`` (PNG
figures) and ``report`` (the Markdown reports that link them).
"""
