"""The Slicer side of LDAE: the only part of LDAELib that knows about 3D Slicer (MRML).

    nodes.py      MRML helpers: volume node <-> (array, affine), result nodes, sequences, provenance
    adapter.py    MRML nodes in, MRML nodes out: the operations the Slicer module offers, run by a
                  worker process (``LDAELib.server``) so that Slicer never imports torch

Dependencies point one way: the scripted module (LDAE/LDAE.py) -> adapter -> server.client / nodes;
the worker -> inference -> pipeline -> networks. Nothing here imports Qt, and importing this package
imports neither torch nor slicer.
"""
