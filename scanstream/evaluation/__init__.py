"""Evaluation: metrics with confidence intervals, the paper's comparison, figures and reports.

``metrics`` (AP, PR curves, bootstrap and exact intervals, McNemar), ``evaluate`` (a model
against the former method on labelled stores), ``figures`` (PNG figures) and ``report``
(the Markdown reports that link them).
"""
