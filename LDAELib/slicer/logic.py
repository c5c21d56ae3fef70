"""What the scripted module's Logic does, without the application: the model, its worker process
and the LDAE operations on volume nodes (through ``adapter``).

``LDAE/LDAE.py``'s ``LDAELogic`` derives from this class and fills in the few things only the
application knows (settings, PythonSlicer, Slicer's temporary and cache folders, first-use
installs, repainting while a script waits) by overriding the hooks at the end. The method names
are the module's console API (camelCase, as Slicer's), e.g.::

    logic.edit(volumeNode, "cn", -2.0)                 # waits, returns the new node
    job = logic.startEdit(volumeNode, "cn", -2.0)      # returns at once; poll() until job.done
"""

from __future__ import annotations

import os
import shutil
import sys

from ..errors import LDAEError


def python_slicer() -> str:
    """``PythonSlicer`` (on the PATH, or beside this interpreter), else this interpreter."""
    here = os.path.dirname(sys.executable)
    for candidate in (shutil.which("PythonSlicer"), os.path.join(here, "PythonSlicer.exe"), os.path.join(here, "PythonSlicer")):
        if candidate and os.path.isfile(candidate):
            return candidate
    return sys.executable


class LDAELogicBase:
    """The model (``modelPath``), its worker (started on first use) and the operations.

    Args:
        modelPath: the model folder (the authors' files or an LDAE bundle); None: the bundled demo
            model, else the folder chosen last time (``lastModelFolder``).
        device: "auto", "cpu", "cuda", …
        python: the interpreter that runs the worker (default ``workerPython()``).
    """

    def __init__(self, modelPath=None, device=None, python=None) -> None:
        self._modelPath = str(modelPath) if modelPath else None
        self._device = device or "auto"
        self._python, self._adapter = python, None
        self._decode_dtype = "float32"

    # ------------------------------------------------------------------ model and worker
    @staticmethod
    def demoModelPath():
        from ..resources import default_model_path

        path = default_model_path()
        return str(path) if path else None

    def modelPath(self):
        """The model used: the one set, else the demo model, else the folder chosen last time."""
        return self._modelPath or self.demoModelPath() or self.lastModelFolder()

    def setModel(self, folder=None, device="auto", fastDecode: bool = False) -> None:
        """Use the model in ``folder`` (None: the bundled demo model). The worker restarts.
        ``fastDecode``: the decoder in bfloat16 where the device computes it natively (≈3× faster
        decodes, within SSIM 0.999 of float32); off, results are the authors' float32 numbers."""
        if folder is None and self.demoModelPath() is None:
            raise LDAEError("The demo model is not installed; choose the folder with the authors' weights or an LDAE bundle.")
        self.close()
        self._modelPath, self._device = (str(folder) if folder else None), device
        self._decode_dtype = "auto" if fastDecode else "float32"

    def adapter(self):
        """The MRML adapter and its worker client (made on first use, after ``ensureDependencies``)."""
        if self._adapter is None:
            from .adapter import LDAESlicerAdapter

            if not self.modelPath():
                raise LDAEError("No model chosen: choose the folder with the authors' weights or an LDAE bundle (Model section).")
            self.ensureDependencies()
            threads = max(1, (os.cpu_count() or 2) - 1)  # leave a core to the application
            self._adapter = LDAESlicerAdapter(self.modelPath(), python=self._python or self.workerPython(), device=self._device,
                                              decode_dtype=self._decode_dtype,
                                              threads=threads, temp_root=self.temporaryFolder(), cache_dir=self.encodingCacheFolder())
            self._adapter.client.extra_env.setdefault("OMP_NUM_THREADS", str(threads))
        return self._adapter

    def startWorker(self, wait: bool = True):
        """Start the worker (it loads the model); with ``wait`` until it is ready."""
        return self.adapter().start_worker(wait=wait, idle=self.idle() if wait else None)

    def isLoaded(self) -> bool:
        return self._adapter is not None and self._adapter.client.running

    def isStarting(self) -> bool:
        """The worker was started and has neither reported ready nor failed yet."""
        return self._adapter is not None and self._adapter.starting

    def startError(self):
        """Why the model could not be loaded (the worker's message, or its exit and stderr), else None."""
        return self._adapter.start_error if self._adapter else None

    def modelInfo(self):
        return self._adapter.info if self._adapter else None

    def poll(self) -> None:
        """Handle what the worker sent (progress, results -> new nodes). Main thread only."""
        if self._adapter is not None:
            self._adapter.poll()

    def cancel(self) -> None:
        """Stop everything now: the worker's process tree ends; the model loads again on the next run."""
        if self._adapter is not None:
            self._adapter.cancel(kill=True)

    def forgetScans(self) -> None:
        """Delete the copies of scans written for the worker (e.g. when the scene closes)."""
        if self._adapter is not None:
            self._adapter.forget_sources()

    def close(self) -> None:
        """Stop the worker and delete every file written for it."""
        if self._adapter is not None:
            self._adapter.close()
            self._adapter = None

    # ------------------------------------------------------------------ operations: jobs to poll
    def startEdit(self, volumeNode, direction, alpha, steps=10, **options):
        return self.adapter().start_edit(volumeNode, direction, alpha, steps, **options)

    def startPreview(self, volumeNode, direction, alpha, steps, **options):
        """An edit into the reusable preview volume (``region``: only the slices on screen)."""
        return self.startEdit(volumeNode, direction, alpha, steps, preview=True, **options)

    def startReconstruct(self, volumeNode, steps=10, **options):
        return self.adapter().start_reconstruct(volumeNode, steps, **options)

    def startInterpolate(self, nodeA, nodeB, fractions=None, steps=10, **options):
        return self.adapter().start_interpolate(nodeA, nodeB, fractions, steps, **options)

    def startVary(self, volumeNode, n=4, seed=0, steps=10, **options):
        return self.adapter().start_vary(volumeNode, n, seed, steps, **options)

    def startEncode(self, volumeNode, steps=10, **options):
        """Encode and invert in the background (no nodes), so the first slider move is fast."""
        return self.adapter().start_encode(volumeNode, steps, **options)

    def promotePreview(self, volumeNode, direction, alpha, steps):
        """Keep the full-quality preview for this alpha as a result (no recomputation); None if there is none."""
        return self._adapter.promote_preview(volumeNode, direction, alpha, steps) if self._adapter else None

    # ------------------------------------------------------------------ operations: wait and return nodes
    def edit(self, volumeNode, direction="cn", alpha=2.0, steps=10, wait=True, **options):
        """Edit ``volumeNode`` along ``direction`` (a name of the model, e.g. "cn", or a probe file)
        by ``alpha`` (a number or a list). Returns the new volume node(s), beside the source."""
        return self.adapter().edit(volumeNode, direction, alpha, steps, wait=wait, idle=self.idle(), **options)

    def interpolate(self, nodeA, nodeB, fractions=(0.25, 0.5, 0.75), steps=10, wait=True, **options):
        """Scans between two timepoints at ``fractions`` (0 = A, 1 = B), or ``months=[...]`` after A.
        Returns the new volume nodes; a sequence and a browser for playback are added too."""
        frac = list(fractions) if fractions is not None else None
        return self.adapter().interpolate(nodeA, nodeB, frac, steps, wait=wait, idle=self.idle(), **options)

    def vary(self, volumeNode, n=4, seed=0, steps=10, wait=True, **options):
        """``n`` stochastic variations and their voxel-wise spread map."""
        return self.adapter().vary(volumeNode, n, seed, steps, wait=wait, idle=self.idle(), **options)

    @staticmethod
    def loadExampleScans(scene=None):
        """The two shipped example visits of one synthetic subject, 36 months apart (held out of the
        demo model's training), in a patient/study folder of ``scene`` (default: Slicer's scene)."""
        import slicer

        from .nodes import add_example_scans

        return add_example_scans(scene or slicer.mrmlScene)

    # ------------------------------------------------------------------ the views and the panel's texts
    @staticmethod
    def visibleRegion():
        """The axial, coronal and sagittal slices on screen, as a preview region (None if none)."""
        import slicer

        from .views import slices_on_screen

        app = getattr(slicer, "app", None)
        return slices_on_screen(app.layoutManager() if app is not None else None)

    @staticmethod
    def showResults(job) -> None:
        """An interpolation's sequence in the Sequences toolbar, else the first volume and its colour overlay."""
        import slicer

        from .views import show_results

        show_results(job, getattr(getattr(slicer, "modules", None), "sequences", None))

    def diagnosticsText(self) -> str:
        """torch, device, threads, memory (from the worker; before it runs, the installed torch)."""
        from .dependencies import installed_version
        from .panel_text import diagnostics_text

        return diagnostics_text(self.modelInfo(), installed_version("torch"))

    def diagnosticsReport(self, slicerVersion=None) -> str:
        """A JSON report for bug reports (Slicer, platform, model, the worker's diagnostics)."""
        from .panel_text import diagnostics_report

        return diagnostics_report(self.modelInfo(), slicerVersion, self._python or self.workerPython())

    # ------------------------------------------------------------------ hooks the module's Logic fills in
    def lastModelFolder(self):
        """The model folder chosen last time (the application's settings), else None."""
        return None

    def workerPython(self) -> str:
        """The interpreter for the worker: ``PythonSlicer`` in Slicer, so torch never enters the application."""
        return python_slicer()

    def temporaryFolder(self):
        """Where the private exchange folder is made (Slicer's temporary path); None: the system's."""
        return None

    def encodingCacheFolder(self):
        """Where encodings are kept on disk when the user allowed it, else None."""
        return None

    def ensureDependencies(self, interactive: bool = True) -> None:
        """Install what the worker needs (in Slicer: ``LDAELib.slicer.dependencies``)."""

    def idle(self):
        """A function to call while a script waits (Slicer's ``processEvents``), or None."""
        return None
