"""Physics below the stages: emulsion and the scanner's picker, shared by the simulator and the range-energy fit.

``emulsion`` (the alpha range-energy relation and its density scaling, decay chains,
ionisation, grain density, track kinds) and ``picker`` (the vertex picker's error model). The
simulator (:mod:`scanstream.simulate`) draws objects with them and the range-energy fit
(:mod:`scanstream.rangeenergy`) inverts them; neither imports the other for them.
"""
