"""The model server: a worker process that keeps a model warm, its JSON-lines protocol, and a client.

``worker`` (``python -m LDAELib.server.worker --model DIR``) runs the inference layer's operations
on requests read from stdin; ``protocol`` is the message format; ``client`` starts, talks to and
stops a worker. Nothing here knows Slicer: the Slicer module reaches it through ``LDAELib.slicer``.
"""
