"""Review: the morning's look at candidates, and the verdicts that become the next training set.

``gallery`` (HTML crop galleries), ``server`` (the local review page) and ``verdicts``
(recorded verdicts and the training store built from them).
"""
