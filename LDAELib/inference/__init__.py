"""What every front end calls: scans in, results with their provenance out.

``image`` (``Image``: an array with its geometry; NIfTI, NRRD, MetaImage read and written once),
``space`` (``to_model``: raw / MNI / model-space input → model space and the way back),
``settings`` (``RunSettings``: steps, seeds, device, precision, validated once),
``provenance`` (the one record every result carries), ``operations`` (``Inference``: reconstruct,
edit, edit preview, interpolate, vary, embed → ``Output``s), ``outputs`` (publishing files all or
nothing, never over a source), ``loading`` (model and pipeline for the settings).
The command line, ``ldae batch`` and the Slicer worker are thin layers over this package.
"""

from .image import Image, read_image, write_image
from .operations import Inference, Output
from .outputs import OutputSet, check_outputs, sidecar_path
from .settings import RunSettings
from .space import INPUT_SPACES, PreparedInput, to_model

__all__ = ["Image", "read_image", "write_image", "Inference", "Output", "OutputSet", "check_outputs", "sidecar_path",
           "RunSettings", "INPUT_SPACES", "PreparedInput", "to_model"]
