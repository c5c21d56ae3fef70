"""The Slicer side of LDAE: the only part of LDAELib that knows about 3D Slicer (MRML).

    nodes.py      MRML helpers: volume node <-> (array, affine), result nodes, sequences, provenance
    adapter.py    MRML nodes in, MRML nodes out: the operations the Slicer module offers, run by a
                  worker process (``LDAELib.server``) so that Slicer never imports torch
    logic.py      what the module's Logic does without the application: model, worker, operations
    session.py    the panel's runs (one job, previews, the slider's preparation) and what it says
    slider.py     when the alpha slider's previews run (drag, release, Apply); no Qt
    dependencies.py  first-use installs: torch through the PyTorch extension, the rest with pip
    panel_text.py the panel's texts;  views.py  what the slice views and the Sequences toolbar show
    testing.py    a tiny model written by PythonSlicer, and the test phantom as a volume node

Dependencies point one way: the scripted module (LDAE/LDAE.py) -> logic / session -> adapter ->
server.client / nodes; the worker -> inference -> pipeline -> networks. Nothing here imports Qt,
and importing this package imports neither torch nor slicer.
"""
