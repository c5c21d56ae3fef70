"""The Slicer side of LDAE: the only part of LDAELib that knows about 3D Slicer.

    protocol.py   the JSON-lines messages between the Slicer process and the worker process
    worker.py     the worker process: keeps the model loaded, caches encodings, runs requests
    client.py     starts, talks to and stops a worker process (plain Python, no Qt, no MRML)
    nodes.py      MRML helpers: volume node <-> (array, affine), result nodes, sequences, provenance
    adapter.py    MRML nodes in, MRML nodes out: the operations the Slicer module offers
    testing.py    a tiny random model bundle and synthetic scans, for tests inside and outside Slicer

Dependencies point one way: the scripted module (LDAE/LDAE.py) -> adapter -> client / nodes;
the worker -> pipeline -> networks. Nothing here imports Qt, and importing this package imports
neither torch nor slicer.
"""
