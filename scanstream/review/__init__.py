"""Review: the morning's look at candidates, and the verdicts that become the next training set.

``morning`` (the summary a person reads first), ``gallery`` (HTML crop galleries) and
``server`` (the local review page). The verdicts table the page appends to, and the training
store built from it, are :mod:`scanstream.verdicts` (range-energy reads it too).
"""
