"""The Slicer side of LDAE: the only part of LDAELib that knows about 3D Slicer.

    protocol.py   the JSON-lines messages between the Slicer process and the worker process
    worker.py     the worker process: keeps the model loaded, caches encodings, runs requests
    client.py     starts, talks to and stops a worker process (plain Python, no Qt, no MRML)
    nodes.py      MRML helpers: volume node <-> (array, affine), result nodes, sequences, provenance
    adapter.py    MRML nodes in, MRML nodes out: the operations the Slicer module offers
    logic.py      what the module's Logic does without the application: model, worker, operations
    session.py    the panel's runs (one job, previews, the slider's preparation) and what it says
    slider.py     when the alpha slider's previews run (drag, release, Apply); no Qt
    dependencies.py  first-use installs: torch through the PyTorch extension, the rest with pip
    panel_text.py the panel's texts;  views.py  what the slice views and the Sequences toolbar show
    testing.py    a tiny random model bundle and synthetic scans, for tests inside and outside Slicer

Dependencies point one way: the scripted module (LDAE/LDAE.py) -> logic / session -> adapter -> client / nodes;
the worker -> pipeline -> networks. Nothing here imports Qt, and importing this package imports
neither torch nor slicer.
"""
