"""Running the LDAE networks: encode a scan once, then reconstruct, edit, interpolate or vary it.

``LDAEPipeline`` (``core``) owns the loops, batches, precision and the encoding cache;
``make_pipeline`` (``factory``) sets one up for a device as the front ends do; ``preview`` decodes
an edit on a few slices only; ``progress`` is the progress/cancel contract of every long call.
"""

from .core import DEFAULT_STEPS, LDAEPipeline, slerp
from .encoding import Encoding, EncodingStore, content_key
from .factory import make_pipeline
from .progress import CancelCallback, Phases, Progress, ProgressCallback

__all__ = ["DEFAULT_STEPS", "LDAEPipeline", "slerp", "Encoding", "EncodingStore", "content_key", "make_pipeline",
           "CancelCallback", "Phases", "Progress", "ProgressCallback"]
